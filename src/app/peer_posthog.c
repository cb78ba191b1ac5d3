/* peer_posthog: placeholder until the posthog wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_posthog_routes(struct app *app)
{
    (void)app;
    return 0;
}
