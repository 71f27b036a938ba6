/* JSON calls to a simulator's HTTP API from the unit tests (control endpoints and the like).
 *
 * Part of tests/unit/support; a test using it must link libcurl and jansson itself (through the
 * layer it tests). */
#ifndef IOTM_TEST_SUPPORT_HTTP_H
#define IOTM_TEST_SUPPORT_HTTP_H

#include <curl/curl.h>
#include <jansson.h>

/* Sends `method` to `url` on the caller's handle `e` (reset first) with the JSON `body` (NULL:
 * none), trusting `ca_file` (NULL: the system's CAs) and ignoring environment proxies, with a
 * 10 s limit. Returns the HTTP status, or 0 after printing curl's error. With `out`, *out gets
 * the parsed answer (new reference, NULL when it is not JSON). */
long support_http_json(CURL *e, const char *method, const char *url, const char *ca_file,
                       const char *body, json_t **out);

#endif
