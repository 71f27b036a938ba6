/* Fuzzes codec_credentials_decode(), the body of PUT /integrations/{id}/credentials, where a
 * client may send back the masked key it was shown. The input is the body.
 *
 * Invariants: a failure is a 400 with Mender's prefix that leaves nothing behind and quotes no
 * key; accepted credentials are SAS ones with a trusted host and a policy name, carrying either a
 * non-empty key or (exclusively) a mask of the form we produce; with a key, their API rendering
 * shows no key beyond its mask and decodes back to the same fields and that mask. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_codec_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct app *app = codec_app();
    char *body = malloc(size ? size : 1);
    FUZZ_CHECK(body != NULL);
    memcpy(body, data, size);
    struct credentials c;
    char *mask = NULL;
    struct iot_error err = {0};
    enum iot_err rc = codec_credentials_decode(app, body, size, &c, &mask, &err);
    if (rc != IOT_OK) {
        codec_check_failure(rc, &err, body, size);
        static const struct credentials zero;
        FUZZ_CHECK(memcmp(&c, &zero, sizeof zero) == 0);
        FUZZ_CHECK(mask == NULL);
    } else {
        codec_check_sas(app, &c, mask != NULL);
        if (mask) {
            size_t n = strlen(mask);
            FUZZ_CHECK(n == 4 + strlen(CONNSTR_MASK_SUFFIX));
            FUZZ_CHECK(strcmp(mask + 4, CONNSTR_MASK_SUFFIX) == 0);
        }
        /* with a mask the key is empty until the app swaps the stored one in: nothing to
         * render yet */
        if (!mask)
            codec_check_encoded(app, &c);
        credentials_clear(&c);
        free(mask);
    }
    free(body);
    return 0;
}
