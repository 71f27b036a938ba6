/* Metrics that other components keep themselves, copied into the registry at scrape time. */
#include "iot-manager/app.h"
#include "iot-manager/queue.h"

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
    struct queue_stats qs;
    if (app->queue && queue_stats(app->queue, &qs, NULL) == IOT_OK) {
        metrics_gauge_set(app->metrics, "iot_manager_queue_pending", "", (double)qs.pending);
        metrics_gauge_set(app->metrics, "iot_manager_queue_ack_pending", "",
                          (double)qs.ack_pending);
        metrics_gauge_set(app->metrics, "iot_manager_queue_dead_letters", "",
                          (double)qs.dead_letters);
    }
}
