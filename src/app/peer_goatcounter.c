/* peer_goatcounter: placeholder until the goatcounter wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_goatcounter_routes(struct app *app)
{
    (void)app;
    return 0;
}
