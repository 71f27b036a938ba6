/* `iot-manager sync-devices`: reconciles the devices iot-manager knows with Mender's view of them
 * and with the tenants' IoT Hubs (contract §4.7; operator's guide: docs/operations.md).
 *
 * Default mode makes the original's calls in the original's order, batch by batch (at most
 * `batch_size` device records of one tenant): ask deviceauth about the batch, decommission the
 * devices it does not know, query the hub's twins for the rest, fix every status that differs
 * from Mender's (read, compare, update with If-Match), and provision the devices the hub lacks
 * (create, connection string to Configure, twin tag). `bulk` reaches the same end state with bulk
 * registry calls of up to 100 devices; `provision_existing` afterwards also provisions every
 * tenant's accepted devices that the hub does not have yet.
 *
 * Every change to a device is made while holding the device's lease when a queue is configured
 * (the same lease the lifecycle workers take), so sync and workers never work on one device at
 * once; a device whose lease is held is skipped and reported. Uses the ports only.
 */
#ifndef IOT_MANAGER_SYNC_H
#define IOT_MANAGER_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "iot-manager/app.h"
#include "iot-manager/error.h"

#define SYNC_BATCH_DEFAULT 50
#define SYNC_BATCH_MAX     500

/* Parses the --batch-size value with the original's texts: IOT_ERR_INVALID "invalid flag
 * 'batch-size': must be a positive integer" or "invalid flag 'batch-size': must be less than
 * 500" (500 itself is allowed). */
enum iot_err sync_batch_size_parse(const char *text, size_t *out, struct iot_error *err);

struct sync_options {
    size_t batch_size; /* 1..SYNC_BATCH_MAX */
    bool fail_early;   /* stop at the first failure */
    bool dry_run;      /* print the plan to `out`; no hub write, no Configure call, no store
                        * write, no lease */
    bool bulk;
    bool provision_existing;
    int64_t event_exp_s;  /* event log expiry */
    int64_t lease_ttl_ms; /* held leases are renewed after a third of it */
    const char *owner;    /* lease owner id; borrowed */
    FILE *out;            /* plan lines; borrowed */
    FILE *progress;       /* NULL: no progress line; else carriage-return updates (a terminal) */
};

struct sync_summary {
    uint64_t checked;  /* device records examined, and accepted devices with --provision-existing */
    uint64_t created;  /* identities provisioned (or, in a dry run, that would be) */
    uint64_t enabled;  /* statuses changed to enabled */
    uint64_t disabled; /* statuses changed to disabled */
    uint64_t deleted;  /* devices decommissioned because Mender no longer knows them */
    uint64_t unlinked; /* links to integrations that no longer exist, removed */
    uint64_t skipped;  /* devices whose lease a worker held */
    uint64_t failed;   /* devices whose change failed (logged, event log entry) */
};

/* Runs the reconciliation. IOT_OK when it went through every device (failures without
 * --fail-early are counted in `out` and logged); with --fail-early the first failure stops it
 * and is returned in `err`; a store that cannot be read stops it too. `out` is always filled. */
enum iot_err sync_devices(struct app *app, const struct sync_options *o, struct sync_summary *out,
                          struct iot_error *err);

/* "sync-devices: 30 devices checked: 1 created, 1 enabled, ..." on one line. */
void sync_summary_print(const struct sync_summary *s, bool dry_run, FILE *out);

#endif
