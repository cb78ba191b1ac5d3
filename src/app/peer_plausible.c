/* peer_plausible: placeholder until the plausible wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_plausible_routes(struct app *app)
{
    (void)app;
    return 0;
}
