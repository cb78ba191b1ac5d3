/* peer_matomo: placeholder until the matomo wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_matomo_routes(struct app *app)
{
    (void)app;
    return 0;
}
