/* The integration domain model shared by the app layer, the API codecs and the store port. */
#ifndef IOT_MANAGER_MODEL_H
#define IOT_MANAGER_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "iot-manager/error.h"
#include "iot-manager/secret.h"
#include "iot-manager/uuid.h"

#define DESCRIPTION_MAX_BYTES 1024

enum provider { PROVIDER_IOT_HUB = 0, PROVIDER_IOT_CORE, PROVIDER_WEBHOOK, PROVIDER__COUNT };
enum credential_type { CREDENTIAL_SAS = 0, CREDENTIAL_AWS, CREDENTIAL_HTTP, CREDENTIAL__COUNT };

/* Azure IoT Hub connection string, as Mender stores it (the key is the secret). */
struct credentials_sas {
    char *hostname;         /* may carry ":port" */
    char *gateway_hostname; /* NULL when absent */
    char *name;             /* SharedAccessKeyName; NULL when absent */
    char *device_id;        /* NULL when absent */
    char *module_id;        /* NULL when absent */
    struct secret access_key;
};

struct credentials_aws {
    char *access_key_id;
    struct secret secret_access_key;
    char *region;
    char *device_policy_name;
};

struct credentials_http {
    char *url;
    struct secret secret; /* SECRET_EMPTY when none (hex-decoded bytes otherwise) */
};

struct credentials {
    enum credential_type type;
    struct credentials_sas sas;   /* CREDENTIAL_SAS */
    struct credentials_aws aws;   /* CREDENTIAL_AWS */
    struct credentials_http http; /* CREDENTIAL_HTTP */
};

struct integration {
    struct uuid id;
    char *tenant_id; /* "" for open-source single tenant; never NULL once filled */
    enum provider provider;
    struct credentials credentials;
    char *description; /* NULL when empty */
};

struct integration_list {
    struct integration *items; /* owned array */
    size_t len;
};

/* A Mender device's record: which integrations it was provisioned to. */
struct device_record {
    char *tenant_id;              /* owned */
    char *id;                     /* Mender device id; owned */
    struct uuid *integration_ids; /* owned array */
    size_t n_integrations;
};

struct device_list {
    struct device_record *items; /* owned array */
    size_t len;
};

/* Delivery outcome of an event for one integration (Mender's `status` array of the log). */
struct delivery_status {
    struct uuid integration_id;
    bool success;
    char *error;     /* owned; NULL when none */
    int status_code; /* 0 when none */
};

/* An entry of the event log (Mender's `log` collection). */
struct event_record {
    struct uuid id;
    char *tenant_id; /* owned */
    char *type;      /* "device-provisioned", "device-status-changed", "device-decommissioned" */
    json_t *data;    /* owned reference: {"id", "status"?, "auth_sets"?, "created_ts"?} */
    int64_t event_ts_ms;
    int64_t expire_ts_ms;
    struct delivery_status *statuses; /* owned array */
    size_t n_statuses;
};

struct event_list {
    struct event_record *items; /* owned array */
    size_t len;
};

void device_record_clear(struct device_record *d);
void device_list_clear(struct device_list *list);
void event_record_clear(struct event_record *ev);
void event_list_clear(struct event_list *list);

/* "iot-hub", "iot-core", "webhook" / "sas", "aws", "http". */
const char *provider_name(enum provider p);
bool provider_parse(const char *text, enum provider *out);
const char *credential_type_name(enum credential_type t);
bool credential_type_parse(const char *text, enum credential_type *out);
/* The credential type each provider takes (iot-hub <-> sas, iot-core <-> aws, webhook <-> http). */
enum credential_type provider_credential_type(enum provider p);

/* The name Go's encoding/json gives a JSON value's type in its UnmarshalTypeError ("object",
 * "array", "string", "number", "bool", "null"): the API and the lifecycle parser repeat Mender's
 * decoding errors word for word. Static, never NULL. */
const char *go_json_type_name(const json_t *v);

/* Free everything an integration owns (secrets wiped) and zero it. NULL-safe. */
void integration_clear(struct integration *in);
void credentials_clear(struct credentials *c);
void integration_list_clear(struct integration_list *list);
enum iot_err credentials_copy(struct credentials *dst, const struct credentials *src);

/* Calls `fn` on each secret of the credentials of the given type (1 for sas/aws, 0 or 1 for
 * http). Stops and returns the first error. */
enum iot_err credentials_for_each_secret(struct credentials *c,
                                         enum iot_err (*fn)(struct secret *s, void *ctx),
                                         void *ctx);

#endif
