/* Lifecycle events: request parsing with Mender's texts, the version-1 event encoding, the device
 * key, the desired-state record's ordering rules and the retry delays. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iot-manager/lifecycle.h"

static void decode_payload(const struct lifecycle_batch *b, size_t i, struct lifecycle_event *ev)
{
    struct iot_error err = {0};
    assert_true(i < b->n);
    assert_int_equal(lifecycle_event_decode(b->payloads[i], b->lens[i], ev, &err), IOT_OK);
}

static void expect_invalid(enum iot_err rc, const struct iot_error *err, const char *msg)
{
    assert_int_equal(rc, IOT_ERR_INVALID);
    assert_string_equal(err->msg, msg);
}

static void expect_invalid_prefix(enum iot_err rc, const struct iot_error *err, const char *prefix)
{
    assert_int_equal(rc, IOT_ERR_INVALID);
    if (strncmp(err->msg, prefix, strlen(prefix)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", err->msg, prefix);
}

static void test_names(void **state)
{
    (void)state;
    enum lifecycle_kind k;
    assert_true(lifecycle_kind_parse("provision", &k) && k == LIFECYCLE_PROVISION);
    assert_true(lifecycle_kind_parse("status", &k) && k == LIFECYCLE_STATUS);
    assert_true(lifecycle_kind_parse("decommission", &k) && k == LIFECYCLE_DECOMMISSION);
    assert_false(lifecycle_kind_parse("Provision", &k));
    assert_false(lifecycle_kind_parse(NULL, &k));
    assert_string_equal(lifecycle_kind_name(LIFECYCLE_STATUS), "status");
    const char *valid[] = {"accepted", "pending",       "rejected",
                           "noauth",   "preauthorized", "decommissioned"};
    for (size_t i = 0; i < 6; i++)
        assert_true(lifecycle_status_valid(valid[i]));
    assert_false(lifecycle_status_valid("no auth"));
    assert_false(lifecycle_status_valid("Accepted"));
    assert_false(lifecycle_status_valid(""));
    assert_true(lifecycle_status_enables("accepted"));
    assert_true(lifecycle_status_enables("preauthorized"));
    assert_false(lifecycle_status_enables("decommissioned"));
    assert_false(lifecycle_status_enables("noauth"));
    assert_false(lifecycle_status_enables("no auth"));
}

static void test_provision_body_shapes(void **state)
{
    (void)state;
    struct lifecycle_batch b;
    struct lifecycle_event ev;
    struct iot_error err = {0};
    /* v4.1.3: deviceauth's whole device; only Mender's DeviceEvent fields are kept */
    const char *full =
        "{\"id\":\"d1\",\"identity_data\":{\"mac\":\"x\"},\"status\":\"accepted\","
        "\"decommissioning\":false,\"created_ts\":\"2024-01-02T03:04:05Z\","
        "\"auth_sets\":[{\"id\":\"a1\",\"pubkey\":\"PEM\",\"status\":\"accepted\"}]}";
    assert_int_equal(lifecycle_parse_provision("t1", full, strlen(full), "req-1", &b, &err),
                     IOT_OK);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.kinds[0], LIFECYCLE_PROVISION);
    decode_payload(&b, 0, &ev);
    assert_int_equal(ev.kind, LIFECYCLE_PROVISION);
    assert_string_equal(ev.tenant_id, "t1");
    assert_string_equal(ev.device_id, "d1");
    assert_string_equal(ev.status, "accepted");
    assert_string_equal(ev.request_id, "req-1");
    assert_non_null(ev.time);
    assert_true(strlen(ev.time) >= 20 && ev.time[strlen(ev.time) - 1] == 'Z');
    assert_string_equal(json_string_value(json_object_get(ev.device, "id")), "d1");
    assert_non_null(json_object_get(ev.device, "auth_sets"));
    assert_non_null(json_object_get(ev.device, "created_ts"));
    assert_null(json_object_get(ev.device, "identity_data"));
    assert_null(json_object_get(ev.device, "decommissioning"));
    lifecycle_event_clear(&ev);
    lifecycle_batch_clear(&b);

    /* the legacy device_id wins when not empty; the empty tenant is valid */
    const char *legacy = "{\"device_id\":\"d2\",\"id\":\"other\"}";
    assert_int_equal(lifecycle_parse_provision("", legacy, strlen(legacy), NULL, &b, &err), IOT_OK);
    decode_payload(&b, 0, &ev);
    assert_string_equal(ev.device_id, "d2");
    assert_string_equal(ev.tenant_id, "");
    assert_string_equal(ev.request_id, "");
    assert_string_equal(json_string_value(json_object_get(ev.device, "id")), "d2");
    lifecycle_event_clear(&ev);
    lifecycle_batch_clear(&b);

    const char *empty_legacy = "{\"device_id\":\"\",\"id\":\"d3\"}";
    assert_int_equal(
        lifecycle_parse_provision("t", empty_legacy, strlen(empty_legacy), NULL, &b, &err), IOT_OK);
    decode_payload(&b, 0, &ev);
    assert_string_equal(ev.device_id, "d3");
    lifecycle_event_clear(&ev);
    lifecycle_batch_clear(&b);
}

static void test_provision_errors(void **state)
{
    (void)state;
    struct lifecycle_batch b;
    struct iot_error err = {0};
    expect_invalid(lifecycle_parse_provision("t", "", 0, NULL, &b, &err), &err,
                   "malformed request body: EOF");
    assert_int_equal(b.n, 0);
    expect_invalid(lifecycle_parse_provision("t", NULL, 0, NULL, &b, &err), &err,
                   "malformed request body: EOF");
    expect_invalid_prefix(lifecycle_parse_provision("t", "{", 1, NULL, &b, &err), &err,
                          "malformed request body: ");
    expect_invalid(lifecycle_parse_provision("t", "[]", 2, NULL, &b, &err), &err,
                   "malformed request body: json: cannot unmarshal array into Go value of type "
                   "http.internalDevice");
    expect_invalid(lifecycle_parse_provision("t", "{}", 2, NULL, &b, &err), &err,
                   "missing device ID");
    expect_invalid(lifecycle_parse_provision("t", "null", 4, NULL, &b, &err), &err,
                   "missing device ID");
    expect_invalid(lifecycle_parse_provision("t", "{\"id\":\"\"}", 9, NULL, &b, &err), &err,
                   "missing device ID");
    expect_invalid_prefix(lifecycle_parse_provision("t", "{\"id\":5}", 8, NULL, &b, &err), &err,
                          "malformed request body: json: cannot unmarshal number");
    char big[LIFECYCLE_ID_MAX + 32];
    memset(big, 'x', sizeof big);
    int n = snprintf(big, sizeof big, "{\"id\":\"");
    memset(big + n, 'a', LIFECYCLE_ID_MAX + 1);
    snprintf(big + n + LIFECYCLE_ID_MAX + 1, sizeof big - (size_t)n - LIFECYCLE_ID_MAX - 1, "\"}");
    expect_invalid_prefix(lifecycle_parse_provision("t", big, strlen(big), NULL, &b, &err), &err,
                          "malformed request body: ");
}

static void test_bulk(void **state)
{
    (void)state;
    struct lifecycle_batch b;
    struct lifecycle_event ev;
    struct iot_error err = {0};
    const char *body = "[{\"id\":\"a\",\"revision\":3},{\"device_id\":\"b\"},{},"
                       "{\"id\":\"c\",\"status\":\"rejected\",\"auth_sets\":[]}]";
    assert_int_equal(
        lifecycle_parse_bulk_status("t", "rejected", body, strlen(body), "r", &b, &err), IOT_OK);
    assert_int_equal(b.n, 3); /* the item without an id is skipped */
    const char *ids[] = {"a", "b", "c"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(b.kinds[i], LIFECYCLE_STATUS);
        decode_payload(&b, i, &ev);
        assert_int_equal(ev.kind, LIFECYCLE_STATUS);
        assert_string_equal(ev.device_id, ids[i]);
        assert_string_equal(ev.status, "rejected");
        lifecycle_event_clear(&ev);
    }
    lifecycle_batch_clear(&b);

    assert_int_equal(lifecycle_parse_bulk_status("", "accepted", "[]", 2, NULL, &b, &err), IOT_OK);
    assert_int_equal(b.n, 0);
    lifecycle_batch_clear(&b);

    expect_invalid(lifecycle_parse_bulk_status("t", "foo", "[]", 2, NULL, &b, &err), &err,
                   "invalid status 'foo'");
    /* the status is checked before the body */
    expect_invalid(lifecycle_parse_bulk_status("t", "no auth", "{", 1, NULL, &b, &err), &err,
                   "invalid status 'no auth'");
    expect_invalid_prefix(lifecycle_parse_bulk_status("t", "accepted", "{", 1, NULL, &b, &err),
                          &err, "invalid request body: ");
    expect_invalid(lifecycle_parse_bulk_status("t", "accepted", "", 0, NULL, &b, &err), &err,
                   "invalid request body: EOF");
    expect_invalid_prefix(
        lifecycle_parse_bulk_status("t", "accepted", "{\"id\":\"a\"}", 10, NULL, &b, &err), &err,
        "invalid request body: json: cannot unmarshal object");
    expect_invalid_prefix(
        lifecycle_parse_bulk_status("t", "accepted", "[{\"id\":1}]", 10, NULL, &b, &err), &err,
        "invalid request body: ");
    expect_invalid_prefix(
        lifecycle_parse_bulk_status("t", "accepted", "[\"a\"]", 5, NULL, &b, &err), &err,
        "invalid request body: ");

    /* 100 items are fine, 101 are not */
    char *many = malloc(101 * 16 + 8);
    assert_non_null(many);
    for (int count = 100; count <= 101; count++) {
        size_t off = 0;
        many[off++] = '[';
        for (int i = 0; i < count; i++)
            off += (size_t)sprintf(many + off, "%s{\"id\":\"d%d\"}", i ? "," : "", i);
        many[off++] = ']';
        many[off] = '\0';
        enum iot_err rc = lifecycle_parse_bulk_status("t", "noauth", many, off, NULL, &b, &err);
        if (count == 100) {
            assert_int_equal(rc, IOT_OK);
            assert_int_equal(b.n, 100);
            lifecycle_batch_clear(&b);
        } else {
            expect_invalid(rc, &err, "too many bulk items: max 100 items per request");
            assert_int_equal(b.n, 0);
        }
    }
    free(many);
}

static void test_decommission(void **state)
{
    (void)state;
    struct lifecycle_batch b;
    struct lifecycle_event ev;
    struct iot_error err = {0};
    assert_int_equal(lifecycle_parse_decommission("t", "d9", "r9", &b, &err), IOT_OK);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.kinds[0], LIFECYCLE_DECOMMISSION);
    decode_payload(&b, 0, &ev);
    assert_int_equal(ev.kind, LIFECYCLE_DECOMMISSION);
    assert_string_equal(ev.device_id, "d9");
    assert_null(ev.status);
    assert_string_equal(json_string_value(json_object_get(ev.device, "id")), "d9");
    lifecycle_event_clear(&ev);
    lifecycle_batch_clear(&b);
    expect_invalid(lifecycle_parse_decommission("t", "", NULL, &b, &err), &err,
                   "missing device ID");
}

/* What another system may publish straight to the stream. */
static void test_event_decode(void **state)
{
    (void)state;
    struct lifecycle_event ev;
    struct iot_error err = {0};
    const char *minimal = "{\"version\":1,\"kind\":\"status\",\"tenant_id\":\"\","
                          "\"device_id\":\"x\",\"status\":\"noauth\"}";
    assert_int_equal(lifecycle_event_decode(minimal, strlen(minimal), &ev, &err), IOT_OK);
    assert_string_equal(ev.status, "noauth");
    assert_string_equal(ev.request_id, "");
    assert_null(ev.time);
    assert_string_equal(json_string_value(json_object_get(ev.device, "id")), "x");
    lifecycle_event_clear(&ev);

    /* a provision always means accepted, whatever status the device carried */
    const char *prov = "{\"version\":1,\"kind\":\"provision\",\"tenant_id\":\"t\","
                       "\"device_id\":\"x\",\"status\":\"pending\"}";
    assert_int_equal(lifecycle_event_decode(prov, strlen(prov), &ev, &err), IOT_OK);
    assert_string_equal(ev.status, "accepted");
    lifecycle_event_clear(&ev);

    const char *bad[] = {
        "not json",
        "[]",
        "{\"kind\":\"status\",\"tenant_id\":\"\",\"device_id\":\"x\",\"status\":\"noauth\"}",
        "{\"version\":2,\"kind\":\"status\",\"tenant_id\":\"\",\"device_id\":\"x\","
        "\"status\":\"noauth\"}",
        "{\"version\":1,\"kind\":\"delete\",\"tenant_id\":\"\",\"device_id\":\"x\"}",
        "{\"version\":1,\"kind\":\"decommission\",\"device_id\":\"x\"}",
        "{\"version\":1,\"kind\":\"decommission\",\"tenant_id\":\"\",\"device_id\":\"\"}",
        "{\"version\":1,\"kind\":\"decommission\",\"tenant_id\":\"\",\"device_id\":7}",
        "{\"version\":1,\"kind\":\"status\",\"tenant_id\":\"\",\"device_id\":\"x\"}",
        "{\"version\":1,\"kind\":\"status\",\"tenant_id\":\"\",\"device_id\":\"x\","
        "\"status\":\"no auth\"}",
        "{\"version\":1,\"kind\":\"decommission\",\"tenant_id\":\"\",\"device_id\":\"x\","
        "\"device\":[]}",
        "{\"version\":1,\"kind\":\"decommission\",\"tenant_id\":\"a\\u0000b\","
        "\"device_id\":\"x\"}",
        "{\"version\":1,\"kind\":\"decommission\",\"tenant_id\":\"\","
        "\"device_id\":\"x\\u0000y\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (lifecycle_event_decode(bad[i], strlen(bad[i]), &ev, &err) != IOT_ERR_INVALID)
            fail_msg("accepted: %s", bad[i]);
        lifecycle_event_clear(&ev);
    }
}

static void test_device_key(void **state)
{
    (void)state;
    char key[LIFECYCLE_KEY_MAX];
    /* python3: hashlib.sha256(b"t1\0dev").hexdigest()[:32] */
    lifecycle_device_key("t1", "dev", key);
    assert_string_equal(key, "d.36fd7dcba5678aec29a9e1e36ce7ca08");
    lifecycle_device_key("", "x", key);
    assert_string_equal(key, "d.3c7e9bc930dc93f01fa69985ef242d9f");
    /* the separator keeps ("t1","dev") and ("t","1dev") apart */
    char other[LIFECYCLE_KEY_MAX];
    lifecycle_device_key("t", "1dev", other);
    assert_string_not_equal(key, other);
}

static struct lifecycle_event make_event(enum lifecycle_kind kind, const char *status)
{
    static char tenant[] = "t", device[] = "d";
    struct lifecycle_event ev = {
        .kind = kind, .tenant_id = tenant, .device_id = device, .status = (char *)status};
    return ev;
}

static void test_record_ordering(void **state)
{
    (void)state;
    struct lifecycle_record r;
    assert_int_equal(lifecycle_record_init(&r, "t", "d"), IOT_OK);
    struct lifecycle_event prov = make_event(LIFECYCLE_PROVISION, "accepted");
    struct lifecycle_event rej = make_event(LIFECYCLE_STATUS, "rejected");
    struct lifecycle_event noauth = make_event(LIFECYCLE_STATUS, "noauth");
    struct lifecycle_event acc = make_event(LIFECYCLE_STATUS, "accepted");
    struct lifecycle_event dec = make_event(LIFECYCLE_DECOMMISSION, NULL);

    assert_true(lifecycle_record_apply(&r, &prov, 5, 0));
    assert_true(r.exists && r.enabled);
    assert_int_equal(r.exists_seq, 5);
    assert_int_equal(r.enabled_seq, 5);
    assert_int_equal(r.gen, 1);
    assert_string_equal(r.status, "accepted");
    /* a redelivery changes nothing */
    assert_false(lifecycle_record_apply(&r, &prov, 5, 0));
    assert_int_equal(r.gen, 1);
    /* an older status never overrides a newer one */
    assert_false(lifecycle_record_apply(&r, &rej, 3, 0));
    assert_true(r.enabled);
    assert_true(lifecycle_record_apply(&r, &rej, 7, 0));
    assert_false(r.enabled);
    assert_int_equal(r.gen, 2);
    assert_false(lifecycle_record_apply(&r, &rej, 7, 0));
    /* disabled either way: the record moves, the hub state does not */
    assert_true(lifecycle_record_apply(&r, &noauth, 8, 0));
    assert_false(r.enabled);
    assert_string_equal(r.status, "noauth");
    assert_int_equal(r.gen, 2);
    /* an older decommission arriving late still counts (exists was set at 5) */
    assert_true(lifecycle_record_apply(&r, &dec, 6, 0));
    assert_false(r.exists);
    assert_int_equal(r.exists_seq, 6);
    assert_int_equal(r.gen, 3);
    /* an even older provision does not bring it back, nor does a newer status */
    assert_false(lifecycle_record_apply(&r, &prov, 4, 0));
    assert_false(r.exists);
    assert_true(lifecycle_record_apply(&r, &acc, 9, 0));
    assert_false(r.exists);
    assert_true(r.enabled);
    /* a newer provision does */
    assert_true(lifecycle_record_apply(&r, &prov, 10, 0));
    assert_true(r.exists && r.enabled);
    lifecycle_record_clear(&r);

    /* the first event of a device always needs a reconciliation, even a "disabled" one */
    assert_int_equal(lifecycle_record_init(&r, "t", "d"), IOT_OK);
    assert_true(lifecycle_record_apply(&r, &rej, 2, 0));
    assert_int_equal(r.gen, 1);
    assert_false(r.exists);
    assert_int_equal(r.exists_seq, 0);
    lifecycle_record_clear(&r);
    assert_int_equal(lifecycle_record_init(&r, "t", "d"), IOT_OK);
    assert_true(lifecycle_record_apply(&r, &dec, 2, 0));
    assert_int_equal(r.gen, 1);
    lifecycle_record_clear(&r);
}

/* Sequences of a re-created events stream start again at 1: they compare only within one
 * epoch (the stream's creation time). */
static void test_record_epochs(void **state)
{
    (void)state;
    struct lifecycle_record r;
    assert_int_equal(lifecycle_record_init(&r, "t", "d"), IOT_OK);
    struct lifecycle_event prov = make_event(LIFECYCLE_PROVISION, "accepted");
    struct lifecycle_event rej = make_event(LIFECYCLE_STATUS, "rejected");
    struct lifecycle_event acc = make_event(LIFECYCLE_STATUS, "accepted");
    struct lifecycle_event dec = make_event(LIFECYCLE_DECOMMISSION, NULL);
    const uint64_t first = 1000, second = 2000;

    /* a record written before epochs were recorded adopts the first one it sees, keeping its
     * sequences: an older event is still older */
    assert_true(lifecycle_record_apply(&r, &prov, 40, 0));
    assert_true(lifecycle_record_apply(&r, &rej, 50, 0));
    assert_int_equal(r.epoch, 0);
    assert_true(lifecycle_record_apply(&r, &acc, 45, first)); /* only the epoch moves */
    assert_int_equal(r.epoch, first);
    assert_false(r.enabled);
    assert_int_equal(r.enabled_seq, 50);
    r.applied_gen = r.gen;
    r.applied_exists_seq = r.exists_seq;

    /* the stream re-created: its event 1 is newer than anything the record holds */
    uint64_t gen = r.gen;
    assert_true(lifecycle_record_apply(&r, &acc, 1, second));
    assert_int_equal(r.epoch, second);
    assert_true(r.enabled);
    assert_int_equal(r.enabled_seq, 1);
    assert_int_equal(r.exists_seq, 0);
    assert_int_equal(r.applied_exists_seq, 0); /* a provision of the new stream is not applied */
    assert_true(r.gen > gen);
    assert_true(lifecycle_record_apply(&r, &dec, 2, second));
    assert_false(r.exists);
    assert_int_equal(r.exists_seq, 2);
    /* within the new epoch the order holds again */
    assert_false(lifecycle_record_apply(&r, &prov, 1, second));
    assert_false(r.exists);
    /* an event of the old stream, whatever its sequence, changes nothing any more */
    assert_false(lifecycle_record_apply(&r, &prov, 99, first));
    assert_false(r.exists);
    assert_int_equal(r.epoch, second);
    /* an event of unknown epoch compares by sequence, as before */
    assert_true(lifecycle_record_apply(&r, &prov, 3, 0));
    assert_true(r.exists);
    assert_int_equal(r.epoch, second);
    lifecycle_record_clear(&r);
}

static void test_record_roundtrip(void **state)
{
    (void)state;
    struct lifecycle_record r, back;
    struct iot_error err = {0};
    assert_int_equal(lifecycle_record_init(&r, "", "dev/\"1\""), IOT_OK);
    r.exists = true;
    r.exists_seq = 1042;
    r.enabled = false;
    r.enabled_seq = 1043;
    snprintf(r.status, sizeof r.status, "rejected");
    r.gen = 7;
    r.applied_gen = 6;
    r.epoch = 1795000000123456789ULL;
    memset(r.cs_sha256, 'a', 64);
    r.cs_sha256[64] = '\0';
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(lifecycle_record_encode(&r, &text, &len, &err), IOT_OK);
    assert_int_equal(lifecycle_record_decode(text, len, &back, &err), IOT_OK);
    assert_string_equal(back.tenant_id, "");
    assert_string_equal(back.device_id, "dev/\"1\"");
    assert_true(back.exists);
    assert_int_equal(back.exists_seq, 1042);
    assert_false(back.enabled);
    assert_int_equal(back.enabled_seq, 1043);
    assert_string_equal(back.status, "rejected");
    assert_int_equal(back.gen, 7);
    assert_int_equal(back.applied_gen, 6);
    assert_int_equal(back.epoch, 1795000000123456789ULL);
    assert_string_equal(back.cs_sha256, r.cs_sha256);
    free(text);
    lifecycle_record_clear(&back);
    lifecycle_record_clear(&r);
    assert_int_not_equal(lifecycle_record_decode("[]", 2, &back, &err), IOT_OK);
    lifecycle_record_clear(&back);
    assert_int_not_equal(lifecycle_record_decode("{\"tenant_id\":\"\"}", 15, &back, &err), IOT_OK);
    lifecycle_record_clear(&back);
    const char *neg = "{\"tenant_id\":\"\",\"device_id\":\"d\",\"gen\":-1}";
    assert_int_not_equal(lifecycle_record_decode(neg, strlen(neg), &back, &err), IOT_OK);
    lifecycle_record_clear(&back);
}

static void test_retry_delay(void **state)
{
    (void)state;
    assert_int_equal(lifecycle_retry_delay_ms(1, -1), 500);
    assert_int_equal(lifecycle_retry_delay_ms(2, -1), 1000);
    assert_int_equal(lifecycle_retry_delay_ms(3, 0), 2000);
    assert_int_equal(lifecycle_retry_delay_ms(10, -1), 30000);
    assert_int_equal(lifecycle_retry_delay_ms(1000000, -1), 30000);
    assert_int_equal(lifecycle_retry_delay_ms(1, 7000), 7000); /* Retry-After honoured */
    assert_int_equal(lifecycle_retry_delay_ms(1, 600000), 30000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_provision_body_shapes),
        cmocka_unit_test(test_provision_errors),
        cmocka_unit_test(test_bulk),
        cmocka_unit_test(test_decommission),
        cmocka_unit_test(test_event_decode),
        cmocka_unit_test(test_device_key),
        cmocka_unit_test(test_record_ordering),
        cmocka_unit_test(test_record_epochs),
        cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_retry_delay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
