/* peers: registration of every peer format's routes (see peers.h). */
#include "app/peers.h"

int peer_routes(struct app *app)
{
    int (*const reg[])(struct app *) = {
        peer_plausible_routes, peer_pixel_routes, peer_goatcounter_routes,
        peer_segment_routes,   peer_posthog_routes, peer_ga4_routes,
        peer_matomo_routes,    peer_umami_routes,
    };
    for (size_t i = 0; i < sizeof reg / sizeof reg[0]; i++) {
        int rc = reg[i](app);
        if (rc) return rc;
    }
    return 0;
}
