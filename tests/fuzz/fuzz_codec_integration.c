/* Fuzzes codec_integration_decode(), the body of POST /integrations (JSON, then the connection
 * string inside it, validated as the service does; DNS is a stub). The input is the body.
 *
 * Invariants: a failure is a 400 with Mender's prefix that leaves nothing behind and quotes no
 * key; an accepted integration is an iot-hub one with SAS credentials whose host is trusted, with
 * a policy name and a non-empty key, and a description within the limit; its API rendering shows
 * no key beyond its mask and, sent back as PUT .../credentials, decodes to the same fields. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_codec_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct app *app = codec_app();
    /* exactly sized and not NUL-terminated: the decoder takes a length */
    char *body = malloc(size ? size : 1);
    FUZZ_CHECK(body != NULL);
    memcpy(body, data, size);
    struct integration in;
    struct iot_error err = {0};
    enum iot_err rc = codec_integration_decode(app, body, size, &in, &err);
    if (rc != IOT_OK) {
        codec_check_failure(rc, &err, body, size);
        static const struct integration zero;
        FUZZ_CHECK(memcmp(&in, &zero, sizeof zero) == 0);
    } else {
        FUZZ_CHECK(in.provider == PROVIDER_IOT_HUB);
        codec_check_sas(app, &in.credentials, false);
        FUZZ_CHECK(!in.description ||
                   (in.description[0] && strlen(in.description) <= DESCRIPTION_MAX_BYTES));
        codec_check_encoded(app, &in.credentials);
        integration_clear(&in);
    }
    free(body);
    return 0;
}
