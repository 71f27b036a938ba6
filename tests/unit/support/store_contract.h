/* The behaviour every store adapter shares, written once and run by each adapter's tests
 * (test_store_sqlite.c, test_store_mongo.c) against its own backend: device records and event
 * log cases, and the helpers those cases and the adapters' own cases use.
 *
 * A backend's fixture starts with a `struct store_contract` (so cmocka's *state, the fixture,
 * is one too), and its setup hands over a migrated, empty store there. The contract_test_*
 * functions are cmocka tests taking that state.
 *
 * Unlike the rest of tests/unit/support, this file needs the store port (include/) and is
 * compiled into the two store tests only (see CMakeLists.txt). Failures go through cmocka. */
#ifndef IOTM_TEST_SUPPORT_STORE_CONTRACT_H
#define IOTM_TEST_SUPPORT_STORE_CONTRACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iot-manager/store.h"

struct store_contract {
    struct store *st; /* the store under test, borrowed from the fixture */
    /* Device ids are unique per tenant (SQLite) rather than across tenants (Mender's MongoDB
     * layout, where the device id is the document's _id). */
    bool device_ids_per_tenant;
    /* Checks through the backend's own view that `devices` device records holding `links`
     * links in all are stored (each backend checks what its layout makes cheap to count). */
    void (*check_raw_devices)(struct store_contract *c, size_t devices, size_t links);
    /* Optional: stores tenant/device linked to `first` then `second` the way an older writer
     * did (MongoDB: Mender's legacy UUID subtype), for the cases to check that the adapter
     * updates such records like its own. NULL when the backend has no such legacy. */
    void (*seed_legacy_device)(struct store_contract *c, const char *tenant, const char *device,
                               const struct uuid *first, const struct uuid *second);
};

/* A provisioning event as deviceauth sends it, with both time fields. */
#define CONTRACT_EVENT_DATA_IN                                                                     \
    "{\"id\":\"dev-1\",\"status\":\"accepted\",\"auth_sets\":[{\"id\":\"as-1\","                   \
    "\"device_id\":\"dev-1\",\"identity_data\":{\"mac\":\"00:11:22\",\"n\":5,\"big\":"             \
    "5000000000,\"f\":1.5,\"on\":true,\"none\":null,\"list\":[1,\"x\",{\"ts\":\"keep\"}]},"        \
    "\"pubkey\":\"-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----\\n\","              \
    "\"status\":\"\",\"ts\":\"2024-05-06T09:08:09.123456789+02:00\"},{\"id\":\"as-2\","            \
    "\"ts\":\"not a time\"},{\"id\":\"as-3\",\"ts\":\"2024-05-06T07:08:09Z\"}],"                   \
    "\"created_ts\":\"2024-05-06T07:08:09.120Z\",\"ts\":\"2024-05-06T09:08:09+02:00\","            \
    "\"updated_ts\":\"2024-05-06T09:08:09+02:00\"}"

/* A UUID of 0x5a bytes but for the first and the last, so tests can name and order ids. */
struct uuid contract_uuid(uint8_t first, uint8_t last);

/* Fails unless both strings are NULL or both are equal. */
void contract_assert_opt_string(const char *a, const char *b);

/* Fails unless the integrations are the same, field by field (sealed secrets byte by byte). */
void contract_assert_integration_equal(const struct integration *a, const struct integration *b);

/* Fails unless tenant/id exists with exactly the `n` links of `want`, in that order. */
void contract_assert_device(struct store *st, const char *tenant, const char *id,
                            const struct uuid *want, size_t n);

/* Fails unless tenant/id is not found (with the port's message and an untouched record). */
void contract_assert_no_device(struct store *st, const char *tenant, const char *id);

/* How many of the tenant's devices link integration `id`. */
int64_t contract_count_linked(struct store *st, const char *tenant, const struct uuid *id);

/* Fills `ev` (caller clears it) with a "device-provisioned" event of `tenant` at `ts` ms,
 * expiring a week later, its data parsed from `data_json` (NULL: none). */
void contract_make_event(struct event_record *ev, const char *tenant, struct uuid id, int64_t ts,
                         const char *data_json);

/* Appends a delivery status to `ev` (`error` copied, NULL for none). */
void contract_add_status(struct event_record *ev, struct uuid integration, bool success,
                         const char *error, int code);

/* store_event_insert() that fails the test with the store's message. */
void contract_insert_event(struct store *st, const struct event_record *ev);

/* The ids of the events store_events_list() returns, by their last byte, as "3,1,2" in `out`
 * (`cap` bytes, truncated to fit). */
void contract_list_event_ids(struct store *st, const char *tenant, const struct uuid *integration,
                             int64_t skip, int64_t limit, char *out, size_t cap);

/* Runs one thread per store of `stores` (`n_threads`, at most CONTRACT_MAX_LINKERS; the same
 * store may be given several times), released together, each linking `links` integrations of
 * its own to t1/dev-shared; fails on any error. */
#define CONTRACT_MAX_LINKERS 8
void contract_link_concurrently(struct store *const *stores, int n_threads, int links);

/* Fails unless t1/dev-shared holds every link contract_link_concurrently() made. */
void contract_assert_all_linked(struct store *st, int n_threads, int links);

/* The shared cases; *state is the backend's fixture (see above). */
void contract_test_device_link_round_trip(void **state);
void contract_test_device_tenant_isolation(void **state);
void contract_test_device_integration_get(void **state);
void contract_test_devices_page(void **state);
void contract_test_integration_unlink_all(void **state);
void contract_test_events_insert_and_list(void **state);
void contract_test_event_data_round_trip(void **state);

#endif
