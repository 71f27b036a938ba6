/* Azure's error bodies (azure-iothub.md §4.1) and the code table of §4.2. */
#include "sim.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ecode_info {
    const char *name;
    unsigned status;
    long number;
};

static const struct ecode_info ecodes[SIM_E_COUNT] = {
    [SIM_E_INVALID_PROTOCOL_VERSION] = {"InvalidProtocolVersion", 400, 400001},
    [SIM_E_ARGUMENT_INVALID] = {"ArgumentInvalid", 400, 400004},
    [SIM_E_ARGUMENT_NULL] = {"ArgumentNull", 400, 400005},
    [SIM_E_IOTHUB_FORMAT_ERROR] = {"IotHubFormatError", 400, 400006},
    [SIM_E_DEVICE_DEFINED_MULTIPLE] = {"DeviceDefinedMultipleTimes", 400, 400011},
    [SIM_E_BULK_FAILURE] = {"BulkRegistryOperationFailure", 400, 400013},
    [SIM_E_UNAUTHORIZED] = {"IotHubUnauthorizedAccess", 401, 401002},
    [SIM_E_DEVICE_NOT_FOUND] = {"DeviceNotFound", 404, 404001},
    [SIM_E_NOT_FOUND] = {"NotFound", 404, 404000},
    [SIM_E_METHOD_NOT_ALLOWED] = {"MethodNotAllowed", 405, 405000},
    [SIM_E_REQUEST_TIMEOUT] = {"RequestTimeout", 408, 408000},
    [SIM_E_DEVICE_ALREADY_EXISTS] = {"DeviceAlreadyExists", 409, 409001},
    [SIM_E_PRECONDITION_FAILED] = {"PreconditionFailed", 412, 412001},
    [SIM_E_TOO_MANY_DEVICES] = {"TooManyDevices", 413, 413002},
    [SIM_E_MESSAGE_TOO_LARGE] = {"MessageTooLarge", 413, 413001},
    [SIM_E_THROTTLING_BACKLOG] = {"ThrottlingBacklogTimeout", 429, 429003},
    [SIM_E_SERVER_ERROR] = {"ServerError", 500, 500001},
    [SIM_E_SERVICE_UNAVAILABLE] = {"ServiceUnavailable", 503, 503001},
    [SIM_E_GATEWAY_TIMEOUT] = {"GatewayTimeout", 504, 504101},
};

unsigned sim_ecode_status(enum sim_ecode e)
{
    return ecodes[e].status;
}

const char *sim_ecode_name(enum sim_ecode e)
{
    return ecodes[e].name;
}

long sim_ecode_number(enum sim_ecode e)
{
    return ecodes[e].number;
}

void sim_reply_json(struct sim_reply *r, unsigned status, json_t *j)
{
    free(r->body);
    r->status = status;
    r->body = sim_json_take_dump(j);
}

void sim_reply_error(struct sim_reply *r, enum sim_ecode e, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    char message[700];
    snprintf(message, sizeof message, "ErrorCode:%s;%s", ecodes[e].name, text);
    char tracking[96];
    sim_tracking(tracking);
    sim_reply_json(r, ecodes[e].status,
                   json_pack("{s:s, s:s}", "Message", message, "ExceptionMessage", tracking));
    r->errorcode = ecodes[e].name;
    r->etag[0] = '\0';
}

void sim_reply_error_bare(struct sim_reply *r, enum sim_ecode e, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    char hex[33];
    sim_random_hex(hex);
    char ts[40];
    sim_format_time(sim_now_us(), ts);
    sim_reply_json(r, ecodes[e].status,
                   json_pack("{s:I, s:s, s:s, s:s}", "errorCode", (json_int_t)ecodes[e].number,
                             "trackingId", hex, "message", text, "timestampUtc", ts));
    r->errorcode = ecodes[e].name;
    r->etag[0] = '\0';
}

void sim_reply_free(struct sim_reply *r)
{
    free(r->body);
    free(r->continuation);
    r->body = NULL;
    r->continuation = NULL;
}
