#include <stdlib.h>
#include <string.h>

#include "iot-manager/model.h"

static const char *const provider_names[PROVIDER__COUNT] = {
    [PROVIDER_IOT_HUB] = "iot-hub",
    [PROVIDER_IOT_CORE] = "iot-core",
    [PROVIDER_WEBHOOK] = "webhook",
};

static const char *const credential_type_names[CREDENTIAL__COUNT] = {
    [CREDENTIAL_SAS] = "sas",
    [CREDENTIAL_AWS] = "aws",
    [CREDENTIAL_HTTP] = "http",
};

static const enum credential_type provider_credentials[PROVIDER__COUNT] = {
    [PROVIDER_IOT_HUB] = CREDENTIAL_SAS,
    [PROVIDER_IOT_CORE] = CREDENTIAL_AWS,
    [PROVIDER_WEBHOOK] = CREDENTIAL_HTTP,
};

const char *provider_name(enum provider p)
{
    return (unsigned)p < PROVIDER__COUNT ? provider_names[p] : "unknown";
}

bool provider_parse(const char *text, enum provider *out)
{
    for (int i = 0; text && i < PROVIDER__COUNT; i++) {
        if (strcmp(text, provider_names[i]) == 0) {
            *out = (enum provider)i;
            return true;
        }
    }
    return false;
}

const char *credential_type_name(enum credential_type t)
{
    return (unsigned)t < CREDENTIAL__COUNT ? credential_type_names[t] : "unknown";
}

bool credential_type_parse(const char *text, enum credential_type *out)
{
    for (int i = 0; text && i < CREDENTIAL__COUNT; i++) {
        if (strcmp(text, credential_type_names[i]) == 0) {
            *out = (enum credential_type)i;
            return true;
        }
    }
    return false;
}

enum credential_type provider_credential_type(enum provider p)
{
    return (unsigned)p < PROVIDER__COUNT ? provider_credentials[p] : CREDENTIAL__COUNT;
}

#define FREE_AND_NULL(p)                                                                           \
    do {                                                                                           \
        free(p);                                                                                   \
        (p) = NULL;                                                                                \
    } while (0)

void credentials_clear(struct credentials *c)
{
    if (!c)
        return;
    FREE_AND_NULL(c->sas.hostname);
    FREE_AND_NULL(c->sas.gateway_hostname);
    FREE_AND_NULL(c->sas.name);
    FREE_AND_NULL(c->sas.device_id);
    FREE_AND_NULL(c->sas.module_id);
    secret_clear(&c->sas.access_key);
    FREE_AND_NULL(c->aws.access_key_id);
    secret_clear(&c->aws.secret_access_key);
    FREE_AND_NULL(c->aws.region);
    FREE_AND_NULL(c->aws.device_policy_name);
    FREE_AND_NULL(c->http.url);
    secret_clear(&c->http.secret);
    memset(c, 0, sizeof *c);
}

void integration_clear(struct integration *in)
{
    if (!in)
        return;
    free(in->tenant_id);
    free(in->description);
    credentials_clear(&in->credentials);
    memset(in, 0, sizeof *in);
}

void integration_list_clear(struct integration_list *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->len; i++)
        integration_clear(&list->items[i]);
    free(list->items);
    list->items = NULL;
    list->len = 0;
}

static enum iot_err dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return IOT_OK;
    *dst = strdup(src);
    return *dst ? IOT_OK : IOT_ERR_NOMEM;
}

enum iot_err credentials_copy(struct credentials *dst, const struct credentials *src)
{
    memset(dst, 0, sizeof *dst);
    dst->type = src->type;
    enum iot_err rc = IOT_OK;
    if ((rc = dup_opt(&dst->sas.hostname, src->sas.hostname)) ||
        (rc = dup_opt(&dst->sas.gateway_hostname, src->sas.gateway_hostname)) ||
        (rc = dup_opt(&dst->sas.name, src->sas.name)) ||
        (rc = dup_opt(&dst->sas.device_id, src->sas.device_id)) ||
        (rc = dup_opt(&dst->sas.module_id, src->sas.module_id)) ||
        (rc = secret_copy(&dst->sas.access_key, &src->sas.access_key)) ||
        (rc = dup_opt(&dst->aws.access_key_id, src->aws.access_key_id)) ||
        (rc = secret_copy(&dst->aws.secret_access_key, &src->aws.secret_access_key)) ||
        (rc = dup_opt(&dst->aws.region, src->aws.region)) ||
        (rc = dup_opt(&dst->aws.device_policy_name, src->aws.device_policy_name)) ||
        (rc = dup_opt(&dst->http.url, src->http.url)) ||
        (rc = secret_copy(&dst->http.secret, &src->http.secret)))
        goto out;
out:
    if (rc != IOT_OK)
        credentials_clear(dst);
    return rc;
}

enum iot_err credentials_for_each_secret(struct credentials *c,
                                         enum iot_err (*fn)(struct secret *s, void *ctx), void *ctx)
{
    switch (c->type) {
    case CREDENTIAL_SAS:
        return fn(&c->sas.access_key, ctx);
    case CREDENTIAL_AWS:
        return fn(&c->aws.secret_access_key, ctx);
    case CREDENTIAL_HTTP:
        return c->http.secret.state == SECRET_EMPTY ? IOT_OK : fn(&c->http.secret, ctx);
    default:
        return IOT_ERR_INTERNAL;
    }
}

void device_record_clear(struct device_record *d)
{
    if (!d)
        return;
    free(d->tenant_id);
    free(d->id);
    free(d->integration_ids);
    memset(d, 0, sizeof *d);
}

void device_list_clear(struct device_list *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->len; i++)
        device_record_clear(&list->items[i]);
    free(list->items);
    list->items = NULL;
    list->len = 0;
}

void event_record_clear(struct event_record *ev)
{
    if (!ev)
        return;
    free(ev->tenant_id);
    free(ev->type);
    json_decref(ev->data);
    for (size_t i = 0; i < ev->n_statuses; i++)
        free(ev->statuses[i].error);
    free(ev->statuses);
    memset(ev, 0, sizeof *ev);
}

void event_list_clear(struct event_list *list)
{
    if (!list)
        return;
    for (size_t i = 0; i < list->len; i++)
        event_record_clear(&list->items[i]);
    free(list->items);
    list->items = NULL;
    list->len = 0;
}

const char *go_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "bool";
    default:
        return "null";
    }
}
