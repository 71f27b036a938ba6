/* The HTTP API (management and internal), wired onto the HTTP server. */
#ifndef IOT_MANAGER_API_H
#define IOT_MANAGER_API_H

#include "iot-manager/app.h"
#include "iot-manager/config.h"
#include "iot-manager/http.h"

#define API_MANAGEMENT_PREFIX "/api/management/v1/iot-manager"
#define API_INTERNAL_PREFIX   "/api/internal/v1/iot-manager"

/* Starts serving the API for `app` as configured; `*out` released by http_server_stop(). */
enum iot_err api_server_start(struct app *app, const struct config *cfg, struct http_server **out,
                              struct iot_error *err);

#endif
