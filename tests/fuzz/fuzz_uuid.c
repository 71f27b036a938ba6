/* Fuzzes uuid_parse(), which reads integration ids from request paths (and from stored data).
 * The input is the text.
 *
 * Invariants: an accepted text is one of google/uuid's four forms and its hex digits are the
 * canonical form's, case aside; formatting and parsing again gives the same id; a rejection
 * carries one of google/uuid's messages, the length one with the real length. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_common.h"
#include "iot-manager/uuid.h"

/* The 32 hex digits of `s` with every '-' at positions 8, 13, 18 and 23 removed. */
static void strip_dashes(const char *s, char out[33])
{
    size_t o = 0;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            continue;
        out[o++] = (char)tolower((unsigned char)s[i]);
    }
    out[o] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    size_t len = strlen(text);
    struct uuid u;
    struct iot_error err = {0};
    enum iot_err rc = uuid_parse(text, &u, &err);
    if (rc != IOT_OK) {
        FUZZ_CHECK(rc == IOT_ERR_INVALID && err.code == rc);
        char expect[64];
        snprintf(expect, sizeof expect, "invalid UUID length: %zu", len);
        FUZZ_CHECK(strcmp(err.msg, expect) == 0 || strcmp(err.msg, "invalid UUID format") == 0 ||
                   (len == 45 && strncmp(err.msg, "invalid urn prefix: \"", 21) == 0));
        FUZZ_CHECK(len == 32 || len == 36 || len == 38 || len == 45 ||
                   strcmp(err.msg, expect) == 0);
        free(text);
        return 0;
    }
    char canon[UUID_STR_LEN + 1];
    uuid_format(&u, canon);
    FUZZ_CHECK(strlen(canon) == UUID_STR_LEN);
    char digits[33];
    strip_dashes(canon, digits);
    char given[33];
    switch (len) {
    case 32:
        for (size_t i = 0; i < 32; i++)
            given[i] = (char)tolower((unsigned char)text[i]);
        given[32] = '\0';
        break;
    case 36:
        strip_dashes(text, given);
        FUZZ_CHECK(strcasecmp(text, canon) == 0);
        break;
    case 38: /* braces, which google/uuid never looks at */
        strip_dashes(text + 1, given);
        FUZZ_CHECK(strncasecmp(text + 1, canon, 36) == 0);
        break;
    case 45:
        FUZZ_CHECK(strncasecmp(text, "urn:uuid:", 9) == 0);
        strip_dashes(text + 9, given);
        FUZZ_CHECK(strcasecmp(text + 9, canon) == 0);
        break;
    default:
        FUZZ_CHECK(!"accepted a text of another length");
    }
    FUZZ_CHECK(strcmp(given, digits) == 0);

    struct uuid back;
    FUZZ_CHECK(uuid_parse(canon, &back, &err) == IOT_OK && uuid_equal(&u, &back));
    free(text);
    return 0;
}
