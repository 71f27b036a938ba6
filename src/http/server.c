#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "iot-manager/http.h"
#include "iot-manager/log.h"
#include "iot-manager/uuid.h"

#define HEADER_REQUEST_ID "X-MEN-RequestID"
#define CONTENT_TYPE_JSON "application/json; charset=utf-8"

struct http_server {
    struct MHD_Daemon *daemon;
    struct http_server_options opts;
    int listen_fd;
    uint16_t port;
    atomic_int active; /* requests between their first callback and completion */
};

struct response_header {
    char name[64];
    char value[512];
};

struct http_response {
    int status;
    json_t *body; /* owned */
    bool has_body;
    char *text; /* owned raw body, instead of `body` */
    char content_type[64];
    struct response_header headers[HTTP_MAX_HEADERS];
    size_t nheaders;
    const struct http_request *req;
};

struct http_request {
    struct http_server *srv;
    struct MHD_Connection *conn;
    const char *method; /* MHD's, valid for the request */
    char *path;         /* owned copy */
    char request_id[HTTP_REQUEST_ID_MAX + 1];
    char *body; /* owned, NUL-terminated for convenience */
    size_t body_len;
    size_t body_cap;
    bool too_big;
    bool responded;
    const struct http_route *route;
    char *scratch; /* owned: holds the path parameters */
    const char *params[HTTP_MAX_PARAMS];
    size_t nparams;
    void *user;
    void (*user_release)(void *);
    json_t *log_fields; /* owned */
    struct timespec started;
    int status;
};

/* ---- request accessors ---- */

void *http_request_ctx(const struct http_request *req)
{
    return req->srv->opts.ctx;
}

const char *http_request_method(const struct http_request *req)
{
    return req->method;
}

const char *http_request_path(const struct http_request *req)
{
    return req->path;
}

const char *http_request_id(const struct http_request *req)
{
    return req->request_id;
}

const char *http_request_param(const struct http_request *req, size_t index)
{
    return index < req->nparams ? req->params[index] : NULL;
}

const char *http_request_header(const struct http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *http_request_query(const struct http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

bool http_request_has_query(const struct http_request *req, const char *name)
{
    const char *value = NULL;
    return MHD_lookup_connection_value_n(req->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name),
                                         &value, NULL) == MHD_YES;
}

const char *http_request_cookie(const struct http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_COOKIE_KIND, name);
}

const char *http_request_body(const struct http_request *req, size_t *len)
{
    *len = req->body_len;
    return req->body ? req->body : "";
}

void http_request_set_user(struct http_request *req, void *user, void (*release)(void *))
{
    if (req->user && req->user_release)
        req->user_release(req->user);
    req->user = user;
    req->user_release = release;
}

void *http_request_user(const struct http_request *req)
{
    return req->user;
}

void http_request_log_field(struct http_request *req, const char *key, const char *value)
{
    if (!req->log_fields)
        req->log_fields = json_object();
    if (req->log_fields && value)
        json_object_set_new(req->log_fields, key, json_string(value));
}

/* ---- response builders ---- */

void http_response_json(struct http_response *resp, int status, json_t *body)
{
    free(resp->text);
    resp->text = NULL;
    json_decref(resp->body);
    resp->status = status;
    resp->body = body;
    resp->has_body = body != NULL;
}

void http_response_text(struct http_response *resp, int status, const char *content_type,
                        char *body)
{
    json_decref(resp->body);
    resp->body = NULL;
    free(resp->text);
    resp->text = body;
    resp->status = status;
    resp->has_body = body != NULL;
    snprintf(resp->content_type, sizeof resp->content_type, "%s", content_type);
}

void http_response_empty(struct http_response *resp, int status)
{
    http_response_json(resp, status, NULL);
}

void http_response_error_with(struct http_response *resp, int status, const char *msg,
                              json_t *extra)
{
    json_t *body = json_object();
    json_t *text = json_string(msg);
    json_object_set_new(body, "error", text ? text : json_string("(invalid UTF-8 in message)"));
    if (resp->req && resp->req->request_id[0])
        json_object_set_new(body, "request_id", json_string(resp->req->request_id));
    if (extra) {
        json_object_update(body, extra);
        json_decref(extra);
    }
    http_response_json(resp, status, body);
}

void http_response_error(struct http_response *resp, int status, const char *msg)
{
    http_response_error_with(resp, status, msg, NULL);
}

void http_response_header(struct http_response *resp, const char *name, const char *value)
{
    if (resp->nheaders == HTTP_MAX_HEADERS)
        return;
    struct response_header *h = &resp->headers[resp->nheaders++];
    snprintf(h->name, sizeof h->name, "%s", name);
    snprintf(h->value, sizeof h->value, "%s", value);
}

/* ---- plumbing ---- */

static double elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - since->tv_sec) * 1e3 +
           (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

/* Accept a caller's id only when it is short printable ASCII: it is echoed in headers and logs. */
static void assign_request_id(struct http_request *req)
{
    const char *given = http_request_header(req, HEADER_REQUEST_ID);
    if (given && *given) {
        size_t n = strlen(given);
        bool ok = n <= HTTP_REQUEST_ID_MAX;
        for (size_t i = 0; ok && i < n; i++)
            ok = given[i] >= 0x20 && given[i] < 0x7f;
        if (ok) {
            memcpy(req->request_id, given, n + 1);
            return;
        }
    }
    struct uuid u;
    if (uuid_generate_v4(&u) == IOT_OK)
        uuid_format(&u, req->request_id);
}

static enum MHD_Result send_response(struct http_request *req, struct http_response *resp)
{
    char *text = NULL;
    size_t len = 0;
    if (resp->text) {
        text = resp->text; /* handed to MHD, which frees it */
        resp->text = NULL;
        len = strlen(text);
    } else if (resp->has_body) {
        text = json_dumps(resp->body, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!text) {
            resp->status = 500;
            text = strdup("{\"error\":\"internal error\"}");
        }
        len = text ? strlen(text) : 0;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, text ? text : (char *)"", text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    if (resp->has_body)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                resp->content_type[0] ? resp->content_type : CONTENT_TYPE_JSON);
    if (req->request_id[0])
        MHD_add_response_header(r, HEADER_REQUEST_ID, req->request_id);
    for (size_t i = 0; i < resp->nheaders; i++)
        MHD_add_response_header(r, resp->headers[i].name, resp->headers[i].value);
    req->status = resp->status;
    req->responded = true;
    enum MHD_Result ret = MHD_queue_response(req->conn, (unsigned)resp->status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond_error(struct http_request *req, int status, const char *msg)
{
    struct http_response resp = {.req = req};
    http_response_error(&resp, status, msg);
    enum MHD_Result ret = send_response(req, &resp);
    json_decref(resp.body);
    free(resp.text);
    return ret;
}

/* Finds the route: exact match, or 405 when only the method differs, or 404. */
static int route_request(struct http_request *req)
{
    const struct http_server_options *o = &req->srv->opts;
    size_t need = strlen(req->path) + 1;
    req->scratch = malloc(need);
    if (!req->scratch)
        return 500;
    bool path_known = false;
    for (size_t i = 0; i < o->nroutes; i++) {
        const char *params[HTTP_MAX_PARAMS];
        size_t np = 0;
        if (!http_route_match(o->routes[i].pattern, req->path, req->scratch, params, &np))
            continue;
        path_known = true;
        if (strcmp(o->routes[i].method, req->method) != 0)
            continue;
        req->route = &o->routes[i];
        memcpy(req->params, params, sizeof params);
        req->nparams = np;
        return 0;
    }
    return path_known ? 405 : 404;
}

static enum MHD_Result dispatch(struct http_request *req)
{
    struct http_response resp = {.req = req, .status = 500};
    const struct http_server_options *o = &req->srv->opts;
    if (!o->before || o->before(req, req->route, &resp))
        req->route->handler(req, &resp);
    enum MHD_Result ret = send_response(req, &resp);
    json_decref(resp.body);
    free(resp.text);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct http_server *srv = cls;
    struct http_request *req = *con_cls;

    if (!req) {
        req = calloc(1, sizeof *req);
        if (!req)
            return MHD_NO;
        *con_cls = req;
        atomic_fetch_add(&srv->active, 1);
        clock_gettime(CLOCK_MONOTONIC, &req->started);
        req->srv = srv;
        req->conn = conn;
        req->method = method;
        req->path = strdup(url);
        if (!req->path)
            return MHD_NO;
        assign_request_id(req);

        int routed = route_request(req);
        if (routed == 404)
            return respond_error(req, 404, "not found");
        if (routed == 405)
            return respond_error(req, 405, "method not allowed");
        if (routed)
            return respond_error(req, 500, "internal error");
        const char *cl = http_request_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end = NULL;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end != cl && n > srv->opts.body_limit)
                return respond_error(req, 413, "http: request body too large");
        }
        return MHD_YES;
    }

    if (*upload_data_size) {
        /* never queue a response while the body is still arriving (MHD ignores it) */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->too_big || req->responded)
            return MHD_YES;
        if (req->body_len + n > srv->opts.body_limit) {
            req->too_big = true;
            free(req->body);
            req->body = NULL;
            req->body_len = req->body_cap = 0;
            return MHD_YES;
        }
        if (req->body_len + n + 1 > req->body_cap) {
            size_t cap = req->body_cap ? req->body_cap : 1024;
            while (cap < req->body_len + n + 1)
                cap *= 2;
            char *grown = realloc(req->body, cap);
            if (!grown)
                return MHD_NO;
            req->body = grown;
            req->body_cap = cap;
        }
        memcpy(req->body + req->body_len, upload_data, n);
        req->body_len += n;
        req->body[req->body_len] = '\0';
        return MHD_YES;
    }

    if (req->responded)
        return MHD_YES;
    if (req->too_big)
        return respond_error(req, 413, "http: request body too large");
    return dispatch(req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct http_server *srv = cls;
    struct http_request *req = *con_cls;
    if (!req)
        return;
    *con_cls = NULL;

    json_t *line = log_record_new(LOG_LEVEL_INFO);
    if (line) {
        json_object_set_new(line, "msg", json_string("request"));
        json_object_set_new(line, "request_id", json_string(req->request_id));
        json_object_set_new(line, "method", json_string(req->method ? req->method : ""));
        json_t *path = req->path ? json_string(req->path) : NULL;
        json_object_set_new(line, "path", path ? path : json_string("(invalid UTF-8)"));
        if (req->route)
            json_object_set_new(line, "route", json_string(req->route->pattern));
        json_object_set_new(line, "status", json_integer(req->status));
        json_object_set_new(line, "duration_ms", json_real(elapsed_ms(&req->started)));
        json_object_set_new(line, "bytes_in", json_integer((json_int_t)req->body_len));
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            json_object_set_new(line, "terminated", json_string("aborted"));
        if (req->log_fields)
            json_object_update(line, req->log_fields);
        log_record_emit(line);
    }

    if (srv->opts.metrics) {
        char route[256];
        char labels[512];
        metrics_label_escape(req->route ? req->route->pattern : "unmatched", route, sizeof route);
        snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%d\"", route,
                 req->method ? req->method : "", req->status);
        metrics_counter_add(srv->opts.metrics, "iot_manager_http_requests_total", labels, 1);
        snprintf(labels, sizeof labels, "route=\"%s\"", route);
        metrics_observe(srv->opts.metrics, "iot_manager_http_request_duration_seconds", labels,
                        elapsed_ms(&req->started) / 1000.0);
    }
    if (req->user && req->user_release)
        req->user_release(req->user);
    json_decref(req->log_fields);
    free(req->scratch);
    free(req->body);
    free(req->path);
    free(req);
    atomic_fetch_sub(&srv->active, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_debug("http: %s", msg);
}

/* Binds the listening socket ourselves so host names, IPv6 literals and ":port" (every address,
 * dual-stack where the system allows it) all work. */
static enum iot_err open_listener(const char *address, int *fd_out, uint16_t *port_out,
                                  struct iot_error *err)
{
    char host[256] = "";
    const char *colon = strrchr(address, ':');
    if (!colon)
        return iot_error_set(err, IOT_ERR_CONFIG, "listen address \"%s\" has no port", address);
    size_t hlen = (size_t)(colon - address);
    if (hlen >= sizeof host)
        return iot_error_set(err, IOT_ERR_CONFIG, "listen host too long");
    memcpy(host, address, hlen);
    host[hlen] = '\0';
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    const char *port = colon + 1;

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    hints.ai_family = host[0] ? AF_UNSPEC : AF_INET6;
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai != 0 && !host[0]) {
        hints.ai_family = AF_INET;
        gai = getaddrinfo(NULL, port, &hints, &res);
    }
    if (gai != 0)
        return iot_error_set(err, IOT_ERR_CONFIG, "listen address \"%s\": %s", address,
                             gai_strerror(gai));
    int fd = -1;
    int last_errno = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int one = 1;
        int zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6 && !host[0])
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 512) == 0)
            break;
        last_errno = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0 && !host[0] && hints.ai_family == AF_INET6) {
        /* no IPv6 on this machine: fall back to IPv4 any */
        char v4[300];
        snprintf(v4, sizeof v4, "0.0.0.0:%s", port);
        return open_listener(v4, fd_out, port_out, err);
    }
    if (fd < 0)
        return iot_error_set(err, IOT_ERR_IO, "cannot listen on %s: %s", address,
                             strerror(last_errno));

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    *fd_out = fd;
    return IOT_OK;
}

enum iot_err http_server_start(const struct http_server_options *opts, struct http_server **out,
                               struct iot_error *err)
{
    struct http_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return iot_error_set(err, IOT_ERR_NOMEM, "out of memory");
    srv->opts = *opts;
    atomic_init(&srv->active, 0);
    enum iot_err rc = open_listener(opts->listen, &srv->listen_fd, &srv->port, err);
    if (rc != IOT_OK) {
        free(srv);
        return rc;
    }

    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (opts->threads == 0)
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;
    else
        flags |= MHD_USE_EPOLL;
    unsigned pool = opts->threads > 1 ? opts->threads : 1;
    srv->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, &on_request, srv, MHD_OPTION_LISTEN_SOCKET, srv->listen_fd,
        MHD_OPTION_NOTIFY_COMPLETED, &on_completed, srv, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)opts->connection_limit, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)opts->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_EXTERNAL_LOGGER, &on_mhd_log, NULL,
        opts->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, pool, MHD_OPTION_END);
    if (!srv->daemon) {
        close(srv->listen_fd);
        free(srv);
        return iot_error_set(err, IOT_ERR_IO, "cannot start the HTTP server on %s", opts->listen);
    }
    *out = srv;
    return IOT_OK;
}

uint16_t http_server_port(const struct http_server *srv)
{
    return srv->port;
}

void http_server_stop(struct http_server *srv)
{
    if (!srv)
        return;
    MHD_socket fd = MHD_quiesce_daemon(srv->daemon);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    double limit_ms = (double)srv->opts.shutdown_timeout_s * 1000.0;
    while (atomic_load(&srv->active) > 0 && elapsed_ms(&start) < limit_ms) {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    MHD_stop_daemon(srv->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    free(srv);
}
