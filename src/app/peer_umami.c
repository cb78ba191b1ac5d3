/* peer_umami: placeholder until the umami wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_umami_routes(struct app *app)
{
    (void)app;
    return 0;
}
