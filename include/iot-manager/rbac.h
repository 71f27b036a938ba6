/* Role-based access control: which Mender roles may read or administer iot-manager.
 * Off by default, as in open-source Mender (every user may do everything). */
#ifndef IOT_MANAGER_RBAC_H
#define IOT_MANAGER_RBAC_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

#include "iot-manager/config.h"

#define RBAC_ROLES_MAX 32

enum rbac_permission { RBAC_NONE = 0, RBAC_READ = 1, RBAC_ADMIN = 2 };

struct rbac_policy {
    bool enabled;
    char admin_buf[CONFIG_STR_MAX];
    const char *admin[RBAC_ROLES_MAX];
    size_t admin_len;
    char read_buf[CONFIG_STR_MAX];
    const char *read[RBAC_ROLES_MAX];
    size_t read_len;
};

void rbac_policy_init(struct rbac_policy *p, const struct config *cfg);

/* The highest permission the roles grant (a JSON array of role names, borrowed; NULL or any
 * other type grants nothing). With RBAC off every caller is admin. */
enum rbac_permission rbac_grant(const struct rbac_policy *p, const json_t *roles);

const char *rbac_permission_name(enum rbac_permission perm);

#endif
