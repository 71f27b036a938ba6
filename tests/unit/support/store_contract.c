/* The store adapters' shared cases: see store_contract.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "support/store_contract.h"

/* What CONTRACT_EVENT_DATA_IN reads back as: the time fields in UTC, to the millisecond,
 * trailing zeros trimmed; everything else as it was. */
#define EVENT_DATA_OUT                                                                             \
    "{\"id\":\"dev-1\",\"status\":\"accepted\",\"auth_sets\":[{\"id\":\"as-1\","                   \
    "\"device_id\":\"dev-1\",\"identity_data\":{\"mac\":\"00:11:22\",\"n\":5,\"big\":"             \
    "5000000000,\"f\":1.5,\"on\":true,\"none\":null,\"list\":[1,\"x\",{\"ts\":\"keep\"}]},"        \
    "\"pubkey\":\"-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----\\n\","              \
    "\"status\":\"\",\"ts\":\"2024-05-06T07:08:09.123Z\"},{\"id\":\"as-2\","                       \
    "\"ts\":\"not a time\"},{\"id\":\"as-3\",\"ts\":\"2024-05-06T07:08:09Z\"}],"                   \
    "\"created_ts\":\"2024-05-06T07:08:09.12Z\",\"ts\":\"2024-05-06T09:08:09+02:00\","             \
    "\"updated_ts\":\"2024-05-06T09:08:09+02:00\"}"

/* A copy of `s` (NULL stays NULL) that the caller frees; running out of memory fails the test. */
static char *contract_strdup(const char *s)
{
    char *copy = s ? strdup(s) : NULL;
    if (s)
        assert_non_null(copy);
    return copy;
}

struct uuid contract_uuid(uint8_t first, uint8_t last)
{
    struct uuid u;
    memset(u.b, 0x5a, sizeof u.b);
    u.b[0] = first;
    u.b[15] = last;
    return u;
}

/* ---- integrations ---- */

void contract_assert_opt_string(const char *a, const char *b)
{
    if (!a || !b)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void assert_secret_equal(const struct secret *a, const struct secret *b)
{
    assert_int_equal(a->state, b->state);
    if (a->state == SECRET_EMPTY)
        return;
    assert_string_equal(a->algorithm, b->algorithm);
    assert_int_equal(a->has_key_id, b->has_key_id);
    if (a->has_key_id)
        assert_int_equal(a->key_id, b->key_id);
    assert_int_equal(a->len, b->len);
    assert_memory_equal(a->data, b->data, a->len);
}

void contract_assert_integration_equal(const struct integration *a, const struct integration *b)
{
    assert_memory_equal(a->id.b, b->id.b, sizeof a->id.b);
    assert_string_equal(a->tenant_id, b->tenant_id);
    assert_int_equal(a->provider, b->provider);
    contract_assert_opt_string(a->description, b->description);
    const struct credentials *x = &a->credentials, *y = &b->credentials;
    assert_int_equal(x->type, y->type);
    /* every kind's fields, whatever the type: the other kinds' must be absent in both */
    contract_assert_opt_string(x->sas.hostname, y->sas.hostname);
    contract_assert_opt_string(x->sas.gateway_hostname, y->sas.gateway_hostname);
    contract_assert_opt_string(x->sas.name, y->sas.name);
    contract_assert_opt_string(x->sas.device_id, y->sas.device_id);
    contract_assert_opt_string(x->sas.module_id, y->sas.module_id);
    assert_secret_equal(&x->sas.access_key, &y->sas.access_key);
    contract_assert_opt_string(x->aws.access_key_id, y->aws.access_key_id);
    contract_assert_opt_string(x->aws.region, y->aws.region);
    contract_assert_opt_string(x->aws.device_policy_name, y->aws.device_policy_name);
    assert_secret_equal(&x->aws.secret_access_key, &y->aws.secret_access_key);
    contract_assert_opt_string(x->http.url, y->http.url);
    assert_secret_equal(&x->http.secret, &y->http.secret);
}

/* ---- device records ---- */

void contract_assert_device(struct store *st, const char *tenant, const char *id,
                            const struct uuid *want, size_t n)
{
    struct iot_error err = {0};
    struct device_record d;
    enum iot_err rc = store_device_get(st, tenant, id, &d, &err);
    if (rc != IOT_OK)
        fail_msg("device_get %s/%s: %s", tenant, id, err.msg);
    assert_string_equal(d.tenant_id, tenant);
    assert_string_equal(d.id, id);
    assert_int_equal(d.n_integrations, n);
    for (size_t i = 0; i < n; i++)
        assert_memory_equal(d.integration_ids[i].b, want[i].b, 16);
    device_record_clear(&d);
}

void contract_assert_no_device(struct store *st, const char *tenant, const char *id)
{
    struct iot_error err = {0};
    struct device_record d;
    assert_int_equal(store_device_get(st, tenant, id, &d, &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "device not found");
    assert_null(d.id);
    assert_null(d.integration_ids);
}

int64_t contract_count_linked(struct store *st, const char *tenant, const struct uuid *id)
{
    struct iot_error err = {0};
    int64_t n = -1;
    assert_int_equal(store_devices_count_linked(st, tenant, id, &n, &err), IOT_OK);
    return n;
}

void contract_test_device_link_round_trip(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x11, 1), b = contract_uuid(0x11, 2);
    const struct uuid ab[] = {a, b};

    contract_assert_no_device(st, "t1", "dev-1");
    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &a, 1);
    /* idempotent, and the links keep the order they were made in */
    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &a, 1);
    assert_int_equal(store_device_link(st, "t1", "dev-1", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", ab, 2);
    assert_int_equal(contract_count_linked(st, "t1", &a), 1);
    assert_int_equal(contract_count_linked(st, "t1", &b), 1);
    c->check_raw_devices(c, 1, 2);

    /* unlink: idempotent, and the record stays even when empty */
    assert_int_equal(store_device_unlink(st, "t1", "dev-1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &b, 1);
    assert_int_equal(store_device_unlink(st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_unlink(st, "t1", "dev-1", &b, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", NULL, 0);
    assert_int_equal(contract_count_linked(st, "t1", &a), 0);
    /* unlinking an unknown device neither fails nor creates it */
    assert_int_equal(store_device_unlink(st, "t1", "dev-none", &a, &err), IOT_OK);
    contract_assert_no_device(st, "t1", "dev-none");

    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_delete(st, "t1", "dev-1", &err), IOT_OK);
    contract_assert_no_device(st, "t1", "dev-1");
    assert_int_equal(contract_count_linked(st, "t1", &a), 0);
    c->check_raw_devices(c, 0, 0);
    assert_int_equal(store_device_delete(st, "t1", "dev-1", &err), IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "device not found");
    /* a new link after the delete starts a new record */
    assert_int_equal(store_device_link(st, "t1", "dev-1", &b, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &b, 1);
}

/* A webhook integration (no secret to seal) of `tenant`; the caller clears it. */
static void make_webhook(struct integration *in, const char *tenant, struct uuid id)
{
    memset(in, 0, sizeof *in);
    in->id = id;
    in->tenant_id = contract_strdup(tenant);
    in->provider = PROVIDER_WEBHOOK;
    in->credentials.type = CREDENTIAL_HTTP;
    in->credentials.http.url = contract_strdup("https://example.com/hook");
}

static void assert_no_linked_integration(struct store *st, const char *tenant, const char *device,
                                         const struct uuid *id)
{
    struct iot_error err = {0};
    struct integration got;
    memset(&got, 0x5a, sizeof got);
    assert_int_equal(store_device_integration_get(st, tenant, device, id, &got, &err),
                     IOT_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "integration not found");
    assert_null(got.tenant_id);
    assert_null(got.credentials.http.url);
}

void contract_test_device_integration_get(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x33, 1), other = contract_uuid(0x33, 2);
    struct integration in_a, in_other;
    make_webhook(&in_a, "t1", a);
    make_webhook(&in_other, "t2", other);
    assert_int_equal(store_integration_create(st, &in_a, &err), IOT_OK);
    assert_int_equal(store_integration_create(st, &in_other, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    /* a link to another tenant's integration id, as a guessed or stale id would make */
    assert_int_equal(store_device_link(st, "t1", "dev-2", &other, &err), IOT_OK);

    struct integration got;
    assert_int_equal(store_device_integration_get(st, "t1", "dev-1", &a, &got, &err), IOT_OK);
    contract_assert_integration_equal(&got, &in_a);
    integration_clear(&got);

    assert_no_linked_integration(st, "t1", "dev-1", &other); /* not linked */
    assert_no_linked_integration(st, "t1", "dev-none", &a);  /* no such device */
    assert_no_linked_integration(st, "t2", "dev-1", &a);     /* another tenant's device */
    assert_no_linked_integration(st, "t1", "dev-2", &other); /* linked, but not t1's */
    /* the integration deleted while the link stays */
    assert_int_equal(store_integration_delete(st, "t1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &a, 1);
    assert_no_linked_integration(st, "t1", "dev-1", &a);
    integration_clear(&in_a);
    integration_clear(&in_other);
}

void contract_test_device_tenant_isolation(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x12, 1), b = contract_uuid(0x12, 2);

    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t2", "dev-2", &b, &err), IOT_OK);
    contract_assert_no_device(st, "t2", "dev-1");
    contract_assert_no_device(st, "t1", "dev-2");
    assert_int_equal(store_device_delete(st, "t2", "dev-1", &err), IOT_ERR_NOT_FOUND);
    assert_int_equal(store_device_unlink(st, "t2", "dev-1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &a, 1);
    assert_int_equal(contract_count_linked(st, "t1", &a), 1);
    assert_int_equal(contract_count_linked(st, "t2", &a), 0);
    assert_int_equal(contract_count_linked(st, "t2", &b), 1);
    assert_int_equal(store_device_delete(st, "t1", "dev-1", &err), IOT_OK);
    contract_assert_device(st, "t2", "dev-2", &b, 1);

    const char *t1_device;
    if (c->device_ids_per_tenant) {
        /* the same id in another tenant is another record */
        assert_int_equal(store_device_link(st, "t1", "dev-2", &a, &err), IOT_OK);
        contract_assert_device(st, "t1", "dev-2", &a, 1);
        contract_assert_device(st, "t2", "dev-2", &b, 1);
        t1_device = "dev-2";
    } else {
        /* another tenant cannot have the id (the upsert's duplicate key, then the retry that
         * matches nothing) */
        assert_int_equal(store_device_link(st, "t1", "dev-2", &a, &err), IOT_ERR_CONFLICT);
        assert_string_equal(err.msg, "device id is already registered to another tenant");
        contract_assert_no_device(st, "t1", "dev-2");
        contract_assert_device(st, "t2", "dev-2", &b, 1);
        assert_int_equal(store_device_link(st, "t1", "dev-3", &a, &err), IOT_OK);
        t1_device = "dev-3";
    }

    /* tenant deletion takes the records and their links */
    assert_int_equal(store_tenant_delete(st, "t1", &err), IOT_OK);
    contract_assert_no_device(st, "t1", t1_device);
    contract_assert_device(st, "t2", "dev-2", &b, 1);
}

static void assert_page_item(const struct device_list *page, size_t i, const char *tenant,
                             const char *id, size_t n_links)
{
    assert_true(i < page->len);
    assert_string_equal(page->items[i].tenant_id, tenant);
    assert_string_equal(page->items[i].id, id);
    assert_int_equal(page->items[i].n_integrations, n_links);
}

void contract_test_devices_page(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x13, 1), b = contract_uuid(0x13, 2);
    struct device_list page = {0};
    /* inserted out of order; ids chosen so that id order alone would interleave tenants */
    assert_int_equal(store_device_link(st, "tb", "dev-0", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "ta", "dev-d", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "", "dev-b", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "ta", "dev-c", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "ta", "dev-c", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "", "dev-a", &a, &err), IOT_OK);
    assert_int_equal(store_device_unlink(st, "", "dev-a", &a, &err), IOT_OK);

    assert_int_equal(store_devices_page(st, "", "", 2, &page, &err), IOT_OK);
    assert_int_equal(page.len, 2);
    assert_page_item(&page, 0, "", "dev-a", 0);
    assert_page_item(&page, 1, "", "dev-b", 1);
    device_list_clear(&page);

    assert_int_equal(store_devices_page(st, "", "dev-b", 2, &page, &err), IOT_OK);
    assert_int_equal(page.len, 2);
    assert_page_item(&page, 0, "ta", "dev-c", 2);
    assert_memory_equal(page.items[0].integration_ids[0].b, b.b, 16);
    assert_memory_equal(page.items[0].integration_ids[1].b, a.b, 16);
    assert_page_item(&page, 1, "ta", "dev-d", 1);
    device_list_clear(&page);

    assert_int_equal(store_devices_page(st, "ta", "dev-d", 10, &page, &err), IOT_OK);
    assert_int_equal(page.len, 1);
    assert_page_item(&page, 0, "tb", "dev-0", 1);
    device_list_clear(&page);

    /* a position between records, and past the end */
    assert_int_equal(store_devices_page(st, "ta", "dev-c0", 10, &page, &err), IOT_OK);
    assert_int_equal(page.len, 2);
    assert_page_item(&page, 0, "ta", "dev-d", 1);
    device_list_clear(&page);
    assert_int_equal(store_devices_page(st, "tb", "dev-0", 10, &page, &err), IOT_OK);
    assert_int_equal(page.len, 0);
    assert_null(page.items);

    assert_int_equal(store_devices_page(st, "", "", 100, &page, &err), IOT_OK);
    assert_int_equal(page.len, 5);
    assert_page_item(&page, 4, "tb", "dev-0", 1);
    device_list_clear(&page);
    assert_int_equal(store_devices_page(st, "", "", 0, &page, &err), IOT_OK);
    assert_int_equal(page.len, 0);
}

void contract_test_integration_unlink_all(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x14, 1), b = contract_uuid(0x14, 2);
    assert_int_equal(store_device_link(st, "t1", "dev-1", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t1", "dev-1", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t1", "dev-2", &a, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t1", "dev-3", &b, &err), IOT_OK);
    assert_int_equal(store_device_link(st, "t2", "dev-4", &a, &err), IOT_OK);
    /* a record an older writer left goes too */
    int64_t legacy = 0;
    if (c->seed_legacy_device) {
        c->seed_legacy_device(c, "t1", "dev-5", &a, &b);
        legacy = 1;
    }
    assert_int_equal(contract_count_linked(st, "t1", &a), 2 + legacy);

    assert_int_equal(store_integration_unlink_all(st, "t1", &a, &err), IOT_OK);
    contract_assert_device(st, "t1", "dev-1", &b, 1);
    contract_assert_device(st, "t1", "dev-2", NULL, 0);
    contract_assert_device(st, "t1", "dev-3", &b, 1);
    if (legacy)
        contract_assert_device(st, "t1", "dev-5", &b, 1);
    contract_assert_device(st, "t2", "dev-4", &a, 1);
    assert_int_equal(contract_count_linked(st, "t1", &a), 0);
    assert_int_equal(contract_count_linked(st, "t1", &b), 2 + legacy);
    assert_int_equal(contract_count_linked(st, "t2", &a), 1);
    /* nothing left to unlink */
    assert_int_equal(store_integration_unlink_all(st, "t1", &a, &err), IOT_OK);
    assert_int_equal(store_integration_unlink_all(st, "nobody", &a, &err), IOT_OK);
}

/* ---- concurrent links ---- */

struct linker {
    struct store *st;
    pthread_barrier_t *start;
    int index;
    int links;
    int errors;
    char first_error[IOT_ERROR_MSG_MAX];
};

static void *linker_main(void *arg)
{
    struct linker *l = arg;
    pthread_barrier_wait(l->start);
    for (int i = 0; i < l->links; i++) {
        struct uuid id = contract_uuid((uint8_t)(0x20 + l->index), (uint8_t)i);
        struct iot_error err = {0};
        if (store_device_link(l->st, "t1", "dev-shared", &id, &err) != IOT_OK && l->errors++ == 0)
            snprintf(l->first_error, sizeof l->first_error, "%s", err.msg);
    }
    return NULL;
}

void contract_link_concurrently(struct store *const *stores, int n_threads, int links)
{
    pthread_t tid[CONTRACT_MAX_LINKERS];
    struct linker l[CONTRACT_MAX_LINKERS];
    pthread_barrier_t start;
    assert_in_range(n_threads, 1, CONTRACT_MAX_LINKERS);
    assert_int_equal(pthread_barrier_init(&start, NULL, (unsigned)n_threads), 0);
    for (int i = 0; i < n_threads; i++) {
        l[i] = (struct linker){.st = stores[i], .start = &start, .index = i, .links = links};
        assert_int_equal(pthread_create(&tid[i], NULL, linker_main, &l[i]), 0);
    }
    for (int i = 0; i < n_threads; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < n_threads; i++) {
        if (l[i].errors)
            fail_msg("linker %d: %d errors, first: %s", i, l[i].errors, l[i].first_error);
    }
}

void contract_assert_all_linked(struct store *st, int n_threads, int links)
{
    struct iot_error err = {0};
    struct device_record d;
    assert_int_equal(store_device_get(st, "t1", "dev-shared", &d, &err), IOT_OK);
    assert_int_equal(d.n_integrations, n_threads * links);
    for (int t = 0; t < n_threads; t++) {
        for (int i = 0; i < links; i++) {
            struct uuid want = contract_uuid((uint8_t)(0x20 + t), (uint8_t)i);
            bool found = false;
            for (size_t k = 0; k < d.n_integrations; k++)
                found = found || uuid_equal(&d.integration_ids[k], &want);
            if (!found)
                fail_msg("integration %d/%d missing from the device", t, i);
        }
    }
    device_record_clear(&d);
}

/* ---- events ---- */

void contract_make_event(struct event_record *ev, const char *tenant, struct uuid id, int64_t ts,
                         const char *data_json)
{
    memset(ev, 0, sizeof *ev);
    ev->id = id;
    ev->tenant_id = contract_strdup(tenant);
    ev->type = contract_strdup("device-provisioned");
    if (data_json) {
        json_error_t jerr;
        ev->data = json_loads(data_json, 0, &jerr);
        if (!ev->data)
            fail_msg("bad test JSON: %s", jerr.text);
    }
    ev->event_ts_ms = ts;
    ev->expire_ts_ms = ts + 604800000;
}

void contract_add_status(struct event_record *ev, struct uuid integration, bool success,
                         const char *error, int code)
{
    struct delivery_status *grown = realloc(ev->statuses, (ev->n_statuses + 1) * sizeof *grown);
    assert_non_null(grown);
    ev->statuses = grown;
    struct delivery_status *ds = &ev->statuses[ev->n_statuses++];
    ds->integration_id = integration;
    ds->success = success;
    ds->error = contract_strdup(error);
    ds->status_code = code;
}

static void assert_event_equal(const struct event_record *got, const struct event_record *want)
{
    assert_memory_equal(got->id.b, want->id.b, 16);
    assert_string_equal(got->tenant_id, want->tenant_id);
    assert_string_equal(got->type, want->type);
    assert_int_equal(got->event_ts_ms, want->event_ts_ms);
    assert_int_equal(got->expire_ts_ms, want->expire_ts_ms);
    if (!want->data || !got->data) {
        assert_ptr_equal(got->data, want->data);
    } else if (!json_equal(got->data, want->data)) {
        char *g = json_dumps(got->data, JSON_SORT_KEYS),
             *w = json_dumps(want->data, JSON_SORT_KEYS);
        fail_msg("data differs:\n got  %s\n want %s", g, w);
    }
    assert_int_equal(got->n_statuses, want->n_statuses);
    for (size_t i = 0; i < want->n_statuses; i++) {
        const struct delivery_status *g = &got->statuses[i], *w = &want->statuses[i];
        assert_memory_equal(g->integration_id.b, w->integration_id.b, 16);
        assert_int_equal(g->success, w->success);
        contract_assert_opt_string(g->error, w->error);
        assert_int_equal(g->status_code, w->status_code);
    }
}

void contract_insert_event(struct store *st, const struct event_record *ev)
{
    struct iot_error err = {0};
    enum iot_err rc = store_event_insert(st, ev, &err);
    if (rc != IOT_OK)
        fail_msg("event_insert: %s", err.msg);
}

void contract_list_event_ids(struct store *st, const char *tenant, const struct uuid *integration,
                             int64_t skip, int64_t limit, char *out, size_t cap)
{
    struct iot_error err = {0};
    struct event_list list = {0};
    enum iot_err rc = store_events_list(st, tenant, integration, skip, limit, &list, &err);
    if (rc != IOT_OK)
        fail_msg("events_list: %s", err.msg);
    out[0] = '\0';
    for (size_t i = 0; i < list.len; i++) {
        char one[8];
        snprintf(one, sizeof one, "%s%u", i ? "," : "", list.items[i].id.b[15]);
        strncat(out, one, cap - strlen(out) - 1);
    }
    event_list_clear(&list);
}

/* Lists the tenant's events (`integration`, `skip`, `limit` as store_events_list()) and
 * compares their ids with `want` (see contract_list_event_ids()). */
static void assert_event_ids(struct store *st, const char *tenant, const struct uuid *integration,
                             int64_t skip, int64_t limit, const char *want)
{
    char ids[64];
    contract_list_event_ids(st, tenant, integration, skip, limit, ids, sizeof ids);
    assert_string_equal(ids, want);
}

void contract_test_events_insert_and_list(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    const struct uuid a = contract_uuid(0x15, 0xa), b = contract_uuid(0x15, 0xb);
    struct event_record ev[7];
    /* last id byte: 1..7; event_ts: 5 and 6 share a time, so the id breaks the tie */
    const int64_t ts[] = {1000, 3000, 2000, 5000, 4000, 4000, 6000};
    for (int i = 0; i < 7; i++) {
        contract_make_event(&ev[i], i == 6 ? "t2" : "t1", contract_uuid(0x15, (uint8_t)(i + 1)),
                            ts[i], "{\"id\":\"dev-1\"}");
    }
    contract_add_status(&ev[0], a, true, NULL, 0);
    contract_add_status(&ev[1], b, false, "boom", 502);
    contract_add_status(&ev[2], b, true, NULL, 200);
    contract_add_status(&ev[2], a, false, "failed to connect device to integration", 1500);
    contract_add_status(&ev[6], a, true, NULL, 0);
    /* the one with the smaller id goes in last */
    for (int i = 6; i >= 0; i--)
        contract_insert_event(st, &ev[i]);
    assert_int_equal(store_event_insert(st, &ev[0], &err), IOT_ERR_CONFLICT);

    assert_event_ids(st, "t1", NULL, 0, 0, "4,5,6,2,3,1");
    assert_event_ids(st, "t1", NULL, 0, 2, "4,5");
    assert_event_ids(st, "t1", NULL, 2, 2, "6,2");
    assert_event_ids(st, "t1", NULL, 4, 2, "3,1");
    assert_event_ids(st, "t1", NULL, 6, 2, "");
    assert_event_ids(st, "t2", NULL, 0, 20, "7");
    assert_event_ids(st, "nobody", NULL, 0, 20, "");

    /* only the events with a delivery status for the integration */
    assert_event_ids(st, "t1", &a, 0, 20, "3,1");
    assert_event_ids(st, "t1", &b, 0, 20, "2,3");
    assert_event_ids(st, "t1", &b, 1, 20, "3");
    const struct uuid other = contract_uuid(0x15, 0xc);
    assert_event_ids(st, "t1", &other, 0, 20, "");
    assert_event_ids(st, "t2", &b, 0, 20, "");

    /* the whole record comes back */
    struct event_list list = {0};
    assert_int_equal(store_events_list(st, "t1", NULL, 0, 0, &list, &err), IOT_OK);
    assert_int_equal(list.len, 6);
    assert_event_equal(&list.items[3], &ev[1]);
    assert_event_equal(&list.items[4], &ev[2]);
    assert_event_equal(&list.items[5], &ev[0]);
    event_list_clear(&list);

    /* expiry: everything whose expiry is before now goes, in every tenant */
    int64_t removed = -1;
    assert_int_equal(store_events_expire(st, 3000 + 604800000, &removed, &err), IOT_OK);
    assert_int_equal(removed, 2);
    assert_event_ids(st, "t1", NULL, 0, 0, "4,5,6,2");
    assert_int_equal(store_events_expire(st, 6001 + 604800000, &removed, &err), IOT_OK);
    assert_int_equal(removed, 5);
    assert_event_ids(st, "t1", NULL, 0, 0, "");
    assert_event_ids(st, "t2", NULL, 0, 0, "");
    for (int i = 0; i < 7; i++)
        event_record_clear(&ev[i]);
}

void contract_test_event_data_round_trip(void **state)
{
    struct store_contract *c = *state;
    struct store *st = c->st;
    struct iot_error err = {0};
    struct event_record in, want, bare;
    contract_make_event(&in, "t1", contract_uuid(0x16, 1), 1714979289123, CONTRACT_EVENT_DATA_IN);
    contract_make_event(&want, "t1", contract_uuid(0x16, 1), 1714979289123, EVENT_DATA_OUT);
    contract_add_status(&in, contract_uuid(0x16, 0xa), false, "boom", 502);
    contract_add_status(&want, contract_uuid(0x16, 0xa), false, "boom", 502);
    contract_make_event(&bare, "t1", contract_uuid(0x16, 2), 1, NULL);
    free(bare.type);
    bare.type = contract_strdup("device-decommissioned");
    /* a JSON null is no data */
    struct event_record nulled;
    contract_make_event(&nulled, "t1", contract_uuid(0x16, 3), 0, NULL);
    nulled.data = json_null();
    contract_insert_event(st, &in);
    contract_insert_event(st, &bare);
    contract_insert_event(st, &nulled);

    struct event_list list = {0};
    assert_int_equal(store_events_list(st, "t1", NULL, 0, 0, &list, &err), IOT_OK);
    assert_int_equal(list.len, 3);
    assert_event_equal(&list.items[0], &want);
    assert_event_equal(&list.items[1], &bare);
    assert_null(list.items[2].data);
    /* member order is kept too */
    char *text = json_dumps(list.items[0].data, JSON_COMPACT);
    assert_string_equal(text, EVENT_DATA_OUT);
    free(text);
    event_list_clear(&list);
    event_record_clear(&in);
    event_record_clear(&want);
    event_record_clear(&bare);
    event_record_clear(&nulled);
}
