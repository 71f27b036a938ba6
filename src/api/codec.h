/* JSON <-> model for the management API, with Mender's validation texts. Private to src/api. */
#ifndef IOT_MANAGER_API_CODEC_H
#define IOT_MANAGER_API_CODEC_H

#include <stdbool.h>
#include <jansson.h>

#include "iot-manager/app.h"
#include "iot-manager/model.h"

/* Decodes and validates a POST /integrations body into `out` (plaintext secrets; owned by the
 * caller). INVALID with "malformed request body: ..." texts. */
enum iot_err codec_integration_decode(const struct app *app, const char *body, size_t len,
                                      struct integration *out, struct iot_error *err);

/* Decodes a PUT /integrations/{id}/credentials body. When the connection string carries our
 * masked key, *masked_key receives a malloc'd copy of the mask (caller frees) and the key stays
 * empty. */
enum iot_err codec_credentials_decode(const struct app *app, const char *body, size_t len,
                                      struct credentials *out, char **masked_key,
                                      struct iot_error *err);

/* The Integration JSON with every secret masked; new reference (NULL on OOM). */
json_t *codec_integration_encode(const struct integration *in);

#endif
