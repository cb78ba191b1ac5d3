/* peer_ga4: placeholder until the ga4 wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_ga4_routes(struct app *app)
{
    (void)app;
    return 0;
}
