/* Metrics that other components keep themselves, copied into the registry at scrape time. */
#include "iot-manager/app.h"

void app_metrics_refresh(struct app *app)
{
    if (!app->metrics)
        return;
    if (app->hub) {
        struct hub_client_stats hs;
        hub_client_stats(app->hub, &hs);
        metrics_counter_set(app->metrics, "iot_manager_hub_throttled_total", "",
                            (double)hs.throttled);
        metrics_counter_set(app->metrics, "iot_manager_hub_ratelimit_wait_seconds_total", "",
                            (double)hs.ratelimit_wait_ns / 1e9);
    }
}
