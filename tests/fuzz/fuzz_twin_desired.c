/* Fuzzes app_twin_validate_desired(), Azure's twin rules applied to the desired properties of
 * PUT/PATCH /devices/{id}/state/{integration_id} before any hub call. The input is the request
 * body, parsed as the API parses it; the root and its "desired" member are both validated, with
 * and without nulls allowed.
 *
 * Invariants: a rejection is a 400 with Mender's prefix; allowing nulls only ever accepts more;
 * an accepted document obeys the rules, checked again here independently (an object; keys not
 * empty, no leading '$', no '.', ' ' or C0/C1 control characters, at most 1 KB; objects nested at
 * most 10 deep; no null unless allowed, and never inside an array; integers within +-2^52); and the
 * verdict survives a round trip through the JSON text the hub is sent. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "iot-manager/app.h"

#define MAX_SAFE_INT 4503599627370495LL /* 2^52 - 1 */

/* `depth` counts the objects above `v` below "desired" (the desired object itself is 0). */
static void check_rules(const json_t *v, int depth, bool allow_null, bool in_array)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        FUZZ_CHECK(depth <= 10);
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child)
        {
            size_t n = strlen(key);
            FUZZ_CHECK(n > 0 && n <= 1024 && key[0] != '$');
            for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)key[i];
                FUZZ_CHECK(c != '.' && c != ' ' && c >= 0x20 && c != 0x7f);
                /* C1 controls (U+0080..U+009F) are control characters to Azure too */
                FUZZ_CHECK(!(c == 0xc2 && i + 1 < n && (unsigned char)key[i + 1] <= 0x9f));
            }
            check_rules(child, depth + 1, allow_null, false);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child)
        {
            check_rules(child, depth + 1, allow_null, true);
        }
        break;
    }
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        FUZZ_CHECK(i <= MAX_SAFE_INT && i >= -MAX_SAFE_INT - 1);
        break;
    }
    case JSON_NULL:
        FUZZ_CHECK(allow_null && !in_array);
        break;
    default:
        break;
    }
}

static enum iot_err validate(const json_t *desired, bool allow_null)
{
    struct iot_error err = {0};
    enum iot_err rc = app_twin_validate_desired(desired, allow_null, &err);
    if (rc != IOT_OK) {
        FUZZ_CHECK(rc == IOT_ERR_INVALID && err.code == rc);
        FUZZ_CHECK(strncmp(err.msg, "malformed request body: desired", 31) == 0);
    } else {
        FUZZ_CHECK(json_is_object(desired));
        check_rules(desired, 0, allow_null, false);
    }
    return rc;
}

static void run(const json_t *desired)
{
    enum iot_err strict = validate(desired, false);
    enum iot_err lax = validate(desired, true);
    FUZZ_CHECK(strict != IOT_OK || lax == IOT_OK);
    if (lax != IOT_OK)
        return;
    /* what the hub receives is this document re-encoded: same verdict when read back */
    char *text = json_dumps(desired, JSON_COMPACT);
    FUZZ_CHECK(text != NULL);
    json_t *again = json_loads(text, 0, NULL);
    FUZZ_CHECK(again != NULL && json_equal(again, desired));
    FUZZ_CHECK(validate(again, false) == strict);
    FUZZ_CHECK(validate(again, true) == IOT_OK);
    json_decref(again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *root = json_loadb((const char *)data, size, 0, NULL);
    if (!root)
        return 0;
    run(root);
    json_t *desired = json_object_get(root, "desired");
    if (desired)
        run(desired);
    json_decref(root);
    return 0;
}
