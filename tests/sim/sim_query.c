/* The query subset of azure-iothub.md §3.5:
 *   SELECT [TOP n] (* | COUNT() [AS a] | path [AS a], ...) FROM devices [WHERE cond]
 *   cond: AND / OR / NOT / ( ), path (=|!=|<>|<|<=|>|>=) literal, path IN [..], path NIN [..],
 *         IS_DEFINED(path); literals 'str' "str" numbers true false null.
 * Paths are evaluated against the twin (deviceId, status, tags.x, properties.desired.x, ...);
 * an optional leading "devices." is the FROM alias. Keywords and property names match
 * case-insensitively (Mender's original sends `devices.deviceid`), string values exactly.
 * Results are ordered by deviceId; the continuation token is opaque and bound to the query text;
 * it is omitted on the last page. */
#include "sim.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define Q_MAX_NODES    256
#define Q_MAX_SEGS     16
#define Q_MAX_PROJ     16
#define Q_TEXT_MAX     8192
#define Q_PAGE_DEFAULT 100
#define Q_PAGE_MAX     1000

enum tok_type {
    T_EOF,
    T_IDENT,
    T_STRING,
    T_NUMBER,
    T_STAR,
    T_COMMA,
    T_DOT,
    T_LPAREN,
    T_RPAREN,
    T_LBRACK,
    T_RBRACK,
    T_OP,
    T_BAD
};

struct tok {
    enum tok_type type;
    char text[1024];
};

struct qpath {
    char *segs[Q_MAX_SEGS];
    size_t n;
};

enum node_kind { N_AND, N_OR, N_NOT, N_CMP, N_IN, N_NIN, N_DEFINED };

struct qnode {
    enum node_kind kind;
    struct qnode *l, *r;
    char op[3];
    struct qpath path;
    json_t *lit; /* literal (CMP) or array (IN/NIN), owned */
};

enum select_kind { SEL_STAR, SEL_COUNT, SEL_PROJ };

struct query {
    const char *src;
    size_t pos;
    struct tok cur;
    char err[256];
    struct qnode nodes[Q_MAX_NODES];
    size_t nnodes;
    enum select_kind sel;
    char count_alias[64];
    struct qpath proj[Q_MAX_PROJ];
    char proj_alias[Q_MAX_PROJ][64];
    size_t nproj;
    long long top; /* < 0 = none */
    struct qnode *where;
};

/* ---- lexer ---------------------------------------------------------------------------------- */

static void lex(struct query *q)
{
    const char *s = q->src;
    while (isspace((unsigned char)s[q->pos])) {
        q->pos++;
    }
    struct tok *t = &q->cur;
    t->text[0] = '\0';
    char c = s[q->pos];
    if (!c) {
        t->type = T_EOF;
        return;
    }
    if (isalpha((unsigned char)c) || c == '_' || c == '$') {
        size_t n = 0;
        while (isalnum((unsigned char)s[q->pos]) || s[q->pos] == '_' || s[q->pos] == '$') {
            if (n + 1 < sizeof t->text) {
                t->text[n++] = s[q->pos];
            }
            q->pos++;
        }
        t->text[n] = '\0';
        t->type = T_IDENT;
        return;
    }
    if (c == '\'' || c == '"') {
        char quote = c;
        size_t n = 0;
        q->pos++;
        for (;;) {
            char d = s[q->pos];
            if (!d) {
                t->type = T_BAD;
                snprintf(q->err, sizeof q->err, "unterminated string literal");
                return;
            }
            if (d == '\\' && s[q->pos + 1]) {
                d = s[++q->pos];
            } else if (d == quote) {
                if (s[q->pos + 1] == quote) { /* doubled quote */
                    q->pos++;
                } else {
                    q->pos++;
                    break;
                }
            }
            if (n + 1 < sizeof t->text) {
                t->text[n++] = d;
            }
            q->pos++;
        }
        t->text[n] = '\0';
        t->type = T_STRING;
        return;
    }
    if (isdigit((unsigned char)c) || (c == '-' && isdigit((unsigned char)s[q->pos + 1]))) {
        size_t n = 0;
        do {
            if (n + 1 < sizeof t->text) {
                t->text[n++] = s[q->pos];
            }
            q->pos++;
        } while (isdigit((unsigned char)s[q->pos]) || s[q->pos] == '.' || s[q->pos] == 'e' ||
                 s[q->pos] == 'E' ||
                 ((s[q->pos] == '-' || s[q->pos] == '+') &&
                  (s[q->pos - 1] == 'e' || s[q->pos - 1] == 'E')));
        t->text[n] = '\0';
        t->type = T_NUMBER;
        return;
    }
    q->pos++;
    t->text[0] = c;
    t->text[1] = '\0';
    switch (c) {
    case '*':
        t->type = T_STAR;
        return;
    case ',':
        t->type = T_COMMA;
        return;
    case '.':
        t->type = T_DOT;
        return;
    case '(':
        t->type = T_LPAREN;
        return;
    case ')':
        t->type = T_RPAREN;
        return;
    case '[':
        t->type = T_LBRACK;
        return;
    case ']':
        t->type = T_RBRACK;
        return;
    case '=':
        t->type = T_OP;
        return;
    case '!':
    case '<':
    case '>': {
        char d = s[q->pos];
        if (d == '=' || (c == '<' && d == '>')) {
            t->text[1] = d;
            t->text[2] = '\0';
            q->pos++;
        } else if (c == '!') {
            break;
        }
        t->type = T_OP;
        return;
    }
    default:
        break;
    }
    t->type = T_BAD;
    snprintf(q->err, sizeof q->err, "unexpected character '%c'", c);
}

static bool is_kw(const struct query *q, const char *kw)
{
    return q->cur.type == T_IDENT && strcasecmp(q->cur.text, kw) == 0;
}

static bool fail(struct query *q, const char *what)
{
    if (!q->err[0]) {
        snprintf(q->err, sizeof q->err, "%s near offset %zu", what, q->pos);
    }
    return false;
}

/* ---- parser --------------------------------------------------------------------------------- */

static void path_free(struct qpath *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->segs[i]);
    }
    p->n = 0;
}

static bool parse_path(struct query *q, struct qpath *p)
{
    if (q->cur.type != T_IDENT) {
        return fail(q, "expected a property path");
    }
    for (;;) {
        if (p->n >= Q_MAX_SEGS) {
            return fail(q, "property path too deep");
        }
        p->segs[p->n++] = strdup(q->cur.text);
        lex(q);
        if (q->cur.type != T_DOT) {
            break;
        }
        lex(q);
        if (q->cur.type != T_IDENT) {
            return fail(q, "expected a property name after '.'");
        }
    }
    /* "devices.x" = "x": the FROM alias. */
    if (p->n > 1 && strcasecmp(p->segs[0], "devices") == 0) {
        free(p->segs[0]);
        memmove(p->segs, p->segs + 1, (p->n - 1) * sizeof p->segs[0]);
        p->n--;
    }
    return true;
}

static json_t *parse_literal(struct query *q)
{
    json_t *v = NULL;
    if (q->cur.type == T_STRING) {
        v = json_string(q->cur.text);
    } else if (q->cur.type == T_NUMBER) {
        char *end = NULL;
        if (strpbrk(q->cur.text, ".eE")) {
            double d = strtod(q->cur.text, &end);
            v = (*end || !isfinite(d)) ? NULL : json_real(d);
        } else {
            long long i = strtoll(q->cur.text, &end, 10);
            v = *end ? NULL : json_integer(i);
        }
    } else if (is_kw(q, "true")) {
        v = json_true();
    } else if (is_kw(q, "false")) {
        v = json_false();
    } else if (is_kw(q, "null")) {
        v = json_null();
    }
    if (!v) {
        fail(q, "expected a literal");
        return NULL;
    }
    lex(q);
    return v;
}

static struct qnode *node_new(struct query *q, enum node_kind k)
{
    if (q->nnodes >= Q_MAX_NODES) {
        fail(q, "query too complex");
        return NULL;
    }
    struct qnode *n = &q->nodes[q->nnodes++];
    memset(n, 0, sizeof *n);
    n->kind = k;
    return n;
}

static struct qnode *parse_or(struct query *q);

static struct qnode *parse_unary(struct query *q)
{
    if (is_kw(q, "NOT")) {
        lex(q);
        struct qnode *n = node_new(q, N_NOT);
        if (!n || !(n->l = parse_unary(q))) {
            return NULL;
        }
        return n;
    }
    if (q->cur.type == T_LPAREN) {
        lex(q);
        struct qnode *n = parse_or(q);
        if (!n) {
            return NULL;
        }
        if (q->cur.type != T_RPAREN) {
            fail(q, "expected ')'");
            return NULL;
        }
        lex(q);
        return n;
    }
    if (is_kw(q, "IS_DEFINED")) {
        lex(q);
        struct qnode *n = node_new(q, N_DEFINED);
        if (!n || q->cur.type != T_LPAREN) {
            fail(q, "expected '(' after IS_DEFINED");
            return NULL;
        }
        lex(q);
        if (!parse_path(q, &n->path) || q->cur.type != T_RPAREN) {
            fail(q, "expected ')'");
            return NULL;
        }
        lex(q);
        return n;
    }
    struct qnode *n = node_new(q, N_CMP);
    if (!n || !parse_path(q, &n->path)) {
        return NULL;
    }
    if (is_kw(q, "IN") || is_kw(q, "NIN")) {
        n->kind = is_kw(q, "IN") ? N_IN : N_NIN;
        lex(q);
        if (q->cur.type != T_LBRACK) {
            fail(q, "expected '[' after IN");
            return NULL;
        }
        lex(q);
        n->lit = json_array();
        while (q->cur.type != T_RBRACK) {
            json_t *v = parse_literal(q);
            if (!v) {
                return NULL;
            }
            json_array_append_new(n->lit, v);
            if (q->cur.type == T_COMMA) {
                lex(q);
            } else if (q->cur.type != T_RBRACK) {
                fail(q, "expected ',' or ']'");
                return NULL;
            }
        }
        lex(q);
        return n;
    }
    if (q->cur.type != T_OP) {
        fail(q, "expected a comparison operator");
        return NULL;
    }
    memcpy(n->op, q->cur.text, sizeof n->op - 1); /* operators are 1 or 2 characters */
    n->op[sizeof n->op - 1] = '\0';
    lex(q);
    n->lit = parse_literal(q);
    return n->lit ? n : NULL;
}

static struct qnode *parse_and(struct query *q)
{
    struct qnode *l = parse_unary(q);
    while (l && is_kw(q, "AND")) {
        lex(q);
        struct qnode *n = node_new(q, N_AND);
        if (!n) {
            return NULL;
        }
        n->l = l;
        if (!(n->r = parse_unary(q))) {
            return NULL;
        }
        l = n;
    }
    return l;
}

static struct qnode *parse_or(struct query *q)
{
    struct qnode *l = parse_and(q);
    while (l && is_kw(q, "OR")) {
        lex(q);
        struct qnode *n = node_new(q, N_OR);
        if (!n) {
            return NULL;
        }
        n->l = l;
        if (!(n->r = parse_and(q))) {
            return NULL;
        }
        l = n;
    }
    return l;
}

static bool copy_name(struct query *q, char *out, size_t n, const char *name)
{
    size_t len = strlen(name);
    if (len >= n) {
        return fail(q, "name too long for an alias");
    }
    memcpy(out, name, len + 1);
    return true;
}

static bool parse_alias(struct query *q, char *out, size_t n)
{
    if (!is_kw(q, "AS")) {
        return true;
    }
    lex(q);
    if (q->cur.type != T_IDENT) {
        return fail(q, "expected an alias after AS");
    }
    if (!copy_name(q, out, n, q->cur.text)) {
        return false;
    }
    lex(q);
    return true;
}

static bool parse_query(struct query *q)
{
    q->top = -1;
    lex(q);
    if (!is_kw(q, "SELECT")) {
        return fail(q, "expected SELECT");
    }
    lex(q);
    if (is_kw(q, "TOP")) {
        lex(q);
        char *end = NULL;
        q->top = q->cur.type == T_NUMBER ? strtoll(q->cur.text, &end, 10) : -1;
        if (q->top < 0 || (end && *end)) {
            return fail(q, "expected a number after TOP");
        }
        lex(q);
    }
    if (q->cur.type == T_STAR) {
        q->sel = SEL_STAR;
        lex(q);
    } else if (is_kw(q, "COUNT")) {
        q->sel = SEL_COUNT;
        snprintf(q->count_alias, sizeof q->count_alias, "$1");
        lex(q);
        if (q->cur.type != T_LPAREN) {
            return fail(q, "expected '(' after COUNT");
        }
        lex(q);
        if (q->cur.type != T_RPAREN) {
            return fail(q, "expected ')'");
        }
        lex(q);
        if (!parse_alias(q, q->count_alias, sizeof q->count_alias)) {
            return false;
        }
    } else {
        q->sel = SEL_PROJ;
        for (;;) {
            if (q->nproj >= Q_MAX_PROJ) {
                return fail(q, "too many projections");
            }
            struct qpath *p = &q->proj[q->nproj];
            if (!parse_path(q, p)) {
                return false;
            }
            if (!copy_name(q, q->proj_alias[q->nproj], sizeof q->proj_alias[0],
                           p->segs[p->n - 1]) ||
                !parse_alias(q, q->proj_alias[q->nproj], sizeof q->proj_alias[0])) {
                return false;
            }
            q->nproj++;
            if (q->cur.type != T_COMMA) {
                break;
            }
            lex(q);
        }
    }
    if (!is_kw(q, "FROM")) {
        return fail(q, "expected FROM");
    }
    lex(q);
    if (!is_kw(q, "devices")) {
        return fail(q, "only FROM devices is supported");
    }
    lex(q);
    if (q->cur.type == T_DOT) {
        return fail(q, "only FROM devices is supported (not devices.modules or devices.jobs)");
    }
    if (is_kw(q, "WHERE")) {
        lex(q);
        if (!(q->where = parse_or(q))) {
            return false;
        }
    }
    if (q->cur.type != T_EOF) {
        return fail(q, "unexpected trailing input");
    }
    return true;
}

static void query_free(struct query *q)
{
    for (size_t i = 0; i < q->nnodes; i++) {
        path_free(&q->nodes[i].path);
        json_decref(q->nodes[i].lit);
    }
    for (size_t i = 0; i < Q_MAX_PROJ; i++) {
        path_free(&q->proj[i]);
    }
}

/* ---- evaluation ------------------------------------------------------------------------------ */

static json_t *walk(json_t *v, char *const *segs, size_t n)
{
    for (size_t i = 0; i < n && v; i++) {
        if (!json_is_object(v)) {
            return NULL;
        }
        json_t *next = json_object_get(v, segs[i]);
        if (!next) {
            const char *k;
            json_t *c;
            json_object_foreach(v, k, c)
            {
                if (strcasecmp(k, segs[i]) == 0) {
                    next = c;
                    break;
                }
            }
        }
        v = next;
    }
    return v;
}

static json_t *time_value(int64_t us)
{
    char t[40];
    sim_format_time(us, t);
    return json_string(t);
}

/* A new value (a copy: never a shared reference, see sim_registry.c) at `p` in d's twin, or
 * NULL when undefined. */
static json_t *resolve(const struct sim_device *d, const struct qpath *p)
{
    if (p->n == 0) {
        return NULL;
    }
    const char *f = p->segs[0];
    if (p->n == 1) {
        if (!strcasecmp(f, "deviceId")) {
            return json_string(d->id);
        }
        if (!strcasecmp(f, "status")) {
            return json_string(d->enabled ? "enabled" : "disabled");
        }
        if (!strcasecmp(f, "statusReason")) {
            return d->status_reason ? json_string(d->status_reason) : json_null();
        }
        if (!strcasecmp(f, "connectionState")) {
            return json_string(d->connected ? "Connected" : "Disconnected");
        }
        if (!strcasecmp(f, "deviceEtag")) {
            return json_string(d->etag);
        }
        if (!strcasecmp(f, "version")) {
            return json_integer(d->twin_version);
        }
        if (!strcasecmp(f, "cloudToDeviceMessageCount")) {
            return json_integer(d->c2d_count);
        }
        if (!strcasecmp(f, "lastActivityTime")) {
            return time_value(d->last_activity_us);
        }
        if (!strcasecmp(f, "statusUpdateTime")) {
            return time_value(d->status_updated_us);
        }
        if (!strcasecmp(f, "authenticationType")) {
            return json_string(d->auth_type == SIM_AUTH_SAS ? "sas" : "other");
        }
        if (!strcasecmp(f, "modelId")) {
            return json_string("");
        }
        if (!strcasecmp(f, "deviceScope")) {
            return d->device_scope ? json_string(d->device_scope) : json_null();
        }
    }
    if (!strcasecmp(f, "capabilities")) {
        if (p->n == 2 && !strcasecmp(p->segs[1], "iotEdge")) {
            return json_boolean(d->iot_edge);
        }
        return p->n == 1 ? json_pack("{s:b}", "iotEdge", d->iot_edge) : NULL;
    }
    if (!strcasecmp(f, "tags")) {
        json_t *v = walk(d->tags, p->segs + 1, p->n - 1);
        return v ? json_deep_copy(v) : NULL;
    }
    if (!strcasecmp(f, "properties") && p->n >= 2) {
        bool desired = !strcasecmp(p->segs[1], "desired");
        if (!desired && strcasecmp(p->segs[1], "reported")) {
            return NULL;
        }
        if (p->n == 3 && !strcmp(p->segs[2], "$version")) {
            return json_integer(desired ? d->desired_version : d->reported_version);
        }
        json_t *v = walk(desired ? d->desired : d->reported, p->segs + 2, p->n - 2);
        return v ? json_deep_copy(v) : NULL;
    }
    return NULL;
}

/* -2 = not comparable, else <0, 0, >0. */
static int compare(const json_t *a, const json_t *b)
{
    if (json_is_string(a) && json_is_string(b)) {
        return strcmp(json_string_value(a), json_string_value(b));
    }
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b)) {
            json_int_t x = json_integer_value(a), y = json_integer_value(b);
            return x < y ? -1 : x > y;
        }
        double x = json_number_value(a), y = json_number_value(b);
        return x < y ? -1 : x > y;
    }
    if (json_is_boolean(a) && json_is_boolean(b)) {
        return json_is_true(a) == json_is_true(b) ? 0 : (json_is_true(a) ? 1 : -1);
    }
    if (json_is_null(a) && json_is_null(b)) {
        return 0;
    }
    return -2;
}

static bool eval(const struct qnode *n, const struct sim_device *d)
{
    switch (n->kind) {
    case N_AND:
        return eval(n->l, d) && eval(n->r, d);
    case N_OR:
        return eval(n->l, d) || eval(n->r, d);
    case N_NOT:
        return !eval(n->l, d);
    case N_DEFINED: {
        json_t *v = resolve(d, &n->path);
        json_decref(v);
        return v != NULL;
    }
    case N_IN:
    case N_NIN: {
        json_t *v = resolve(d, &n->path);
        if (!v) {
            return false; /* undefined never matches, not even NIN */
        }
        bool found = false;
        size_t i;
        json_t *e;
        json_array_foreach(n->lit, i, e)
        {
            if (compare(v, e) == 0) {
                found = true;
                break;
            }
        }
        json_decref(v);
        return n->kind == N_IN ? found : !found;
    }
    case N_CMP: {
        json_t *v = resolve(d, &n->path);
        if (!v) {
            return false;
        }
        int c = compare(v, n->lit);
        json_decref(v);
        if (c == -2) {
            return false;
        }
        if (!strcmp(n->op, "=")) {
            return c == 0;
        }
        if (!strcmp(n->op, "!=") || !strcmp(n->op, "<>")) {
            return c != 0;
        }
        if (!strcmp(n->op, "<")) {
            return c < 0;
        }
        if (!strcmp(n->op, "<=")) {
            return c <= 0;
        }
        if (!strcmp(n->op, ">")) {
            return c > 0;
        }
        if (!strcmp(n->op, ">=")) {
            return c >= 0;
        }
        return false;
    }
    }
    return false;
}

static bool path_is_device_id(const struct qpath *p)
{
    return p->n == 1 && strcasecmp(p->segs[0], "deviceId") == 0;
}

static int cmp_dev(const void *a, const void *b)
{
    const struct sim_device *x = *(const struct sim_device *const *)a;
    const struct sim_device *y = *(const struct sim_device *const *)b;
    return strcmp(x->id, y->id);
}

static uint64_t text_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Token: base64("q1|<query hash>|<served>|<last id>"). */
static bool token_parse(const char *tok, uint64_t qhash, long long *served, char *last,
                        size_t last_n)
{
    unsigned char raw[512];
    size_t len = 0;
    if (!sim_b64_decode(tok, raw, sizeof raw - 1, &len)) {
        return false;
    }
    raw[len] = '\0';
    unsigned long long h = 0;
    long long count = 0;
    int off = 0;
    if (sscanf((const char *)raw, "q1|%16llx|%lld|%n", &h, &count, &off) != 2 || off <= 0 ||
        h != qhash || count < 0) {
        return false;
    }
    snprintf(last, last_n, "%s", (const char *)raw + off);
    *served = count;
    return true;
}

static char *token_make(uint64_t qhash, long long served, const char *last)
{
    char raw[400];
    int n =
        snprintf(raw, sizeof raw, "q1|%016llx|%lld|%s", (unsigned long long)qhash, served, last);
    char *out = malloc(4 * ((size_t)n / 3 + 1) + 1);
    if (out) {
        sim_b64_encode((const unsigned char *)raw, (size_t)n, out);
    }
    return out;
}

static void add_candidate(struct sim_device ***cands, size_t *n, size_t *cap, struct sim_device *d)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        struct sim_device **m = realloc(*cands, nc * sizeof *m);
        if (!m) {
            return;
        }
        *cands = m;
        *cap = nc;
    }
    (*cands)[(*n)++] = d;
}

void sim_route_query(struct sim *s, const char *body, size_t len, const char *max_items,
                     const char *continuation, struct sim_reply *r)
{
    json_error_t jerr;
    json_t *j = json_loadb(body ? body : "", len, 0, &jerr);
    json_t *qt = json_object_get(j, "query");
    if (!json_is_string(qt) || json_string_length(qt) == 0 || json_string_length(qt) > Q_TEXT_MAX) {
        json_decref(j);
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID,
                        "The request body must be {\"query\":\"SELECT ...\"}");
        return;
    }
    struct query *q = calloc(1, sizeof *q);
    if (!q) {
        json_decref(j);
        sim_reply_error(r, SIM_E_SERVER_ERROR, "out of memory");
        return;
    }
    q->src = json_string_value(qt);
    uint64_t qhash = text_hash(q->src);
    long long page = Q_PAGE_DEFAULT;
    if (max_items) {
        char *end = NULL;
        long long v = strtoll(max_items, &end, 10);
        if (end != max_items && !*end && v > 0) {
            page = v > Q_PAGE_MAX ? Q_PAGE_MAX : v; /* "the service may use a different value" */
        }
    }
    long long served = 0;
    char last[SIM_ID_MAX + 1] = "";
    struct sim_device **cands = NULL;
    size_t ncand = 0, cap = 0;
    if (!parse_query(q)) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "Query syntax error: %s", q->err);
        goto out;
    }
    if (continuation && !token_parse(continuation, qhash, &served, last, sizeof last)) {
        sim_reply_error(r, SIM_E_ARGUMENT_INVALID, "Invalid continuation token");
        goto out;
    }
    pthread_rwlock_rdlock(&s->reg.lock);
    /* Direct lookups for deviceId = / IN at the root; a full scan otherwise. */
    const struct qnode *w = q->where;
    if (w && (w->kind == N_IN || (w->kind == N_CMP && !strcmp(w->op, "="))) &&
        path_is_device_id(&w->path)) {
        json_t *list = w->kind == N_IN ? json_incref(w->lit) : json_pack("[O]", w->lit);
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e)
        {
            struct sim_device *d =
                json_is_string(e) ? sim_registry_find(&s->reg, json_string_value(e)) : NULL;
            bool dup = false;
            for (size_t k = 0; d && k < ncand; k++) {
                dup = dup || cands[k] == d;
            }
            if (d && !dup) {
                add_candidate(&cands, &ncand, &cap, d);
            }
        }
        json_decref(list);
    } else {
        for (size_t i = 0; i < s->reg.nbuckets; i++) {
            for (struct sim_device *d = s->reg.buckets[i]; d; d = d->next) {
                if (!w || eval(w, d)) {
                    add_candidate(&cands, &ncand, &cap, d);
                }
            }
        }
    }
    if (q->sel == SEL_COUNT) {
        json_int_t count = (json_int_t)ncand;
        if (q->top >= 0 && count > q->top) {
            count = q->top;
        }
        sim_reply_json(r, 200, json_pack("[{s:I}]", q->count_alias, count));
        r->item_type = "Raw";
        pthread_rwlock_unlock(&s->reg.lock);
        goto out;
    }
    if (ncand > 1) { /* cands may be NULL when nothing matched: qsort's argument must not be */
        qsort(cands, ncand, sizeof *cands, cmp_dev);
    }
    size_t start = 0;
    if (last[0]) {
        while (start < ncand && strcmp(cands[start]->id, last) <= 0) {
            start++;
        }
    }
    long long limit = page;
    if (q->top >= 0 && q->top - served < limit) {
        limit = q->top - served > 0 ? q->top - served : 0;
    }
    json_t *arr = json_array();
    size_t i = start;
    for (; i < ncand && (long long)json_array_size(arr) < limit; i++) {
        const struct sim_device *d = cands[i];
        if (q->sel == SEL_STAR) {
            json_array_append_new(arr, sim_twin_json(d));
        } else {
            json_t *o = json_object();
            for (size_t k = 0; k < q->nproj; k++) {
                json_t *v = resolve(d, &q->proj[k]);
                if (v) {
                    json_object_set_new(o, q->proj_alias[k], v);
                }
            }
            json_array_append_new(arr, o);
        }
    }
    long long now_served = served + (long long)json_array_size(arr);
    bool more = i < ncand && (q->top < 0 || now_served < q->top);
    if (more && i > 0) {
        r->continuation = token_make(qhash, now_served, cands[i - 1]->id);
    }
    sim_reply_json(r, 200, arr); /* rendered under the lock: twins share live subtrees */
    r->item_type = q->sel == SEL_STAR ? "Twin" : "Raw";
    pthread_rwlock_unlock(&s->reg.lock);
out:
    free(cands);
    query_free(q);
    free(q);
    json_decref(j);
}
