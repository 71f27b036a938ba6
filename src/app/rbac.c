#include <stdio.h>
#include <string.h>

#include "iot-manager/rbac.h"

static size_t split_roles(const char *text, char *buf, size_t cap, const char **out, size_t max)
{
    size_t n = 0;
    snprintf(buf, cap, "%s", text);
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t,", &save); tok && n < max;
         tok = strtok_r(NULL, " \t,", &save))
        out[n++] = tok;
    return n;
}

void rbac_policy_init(struct rbac_policy *p, const struct config *cfg)
{
    memset(p, 0, sizeof *p);
    p->enabled = cfg->rbac;
    p->admin_len = split_roles(cfg->rbac_admin_roles, p->admin_buf, sizeof p->admin_buf, p->admin,
                               RBAC_ROLES_MAX);
    p->read_len =
        split_roles(cfg->rbac_read_roles, p->read_buf, sizeof p->read_buf, p->read, RBAC_ROLES_MAX);
}

static bool listed(const char *role, const char *const *roles, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(role, roles[i]) == 0)
            return true;
    }
    return false;
}

enum rbac_permission rbac_grant(const struct rbac_policy *p, const json_t *roles)
{
    if (!p->enabled)
        return RBAC_ADMIN;
    enum rbac_permission best = RBAC_NONE;
    size_t i;
    json_t *role;
    if (!json_is_array(roles))
        return RBAC_NONE;
    json_array_foreach(roles, i, role)
    {
        const char *name = json_string_value(role);
        if (!name)
            continue;
        if (listed(name, p->admin, p->admin_len))
            return RBAC_ADMIN;
        if (listed(name, p->read, p->read_len))
            best = RBAC_READ;
    }
    return best;
}

const char *rbac_permission_name(enum rbac_permission perm)
{
    switch (perm) {
    case RBAC_ADMIN:
        return "admin";
    case RBAC_READ:
        return "read";
    default:
        return "none";
    }
}
