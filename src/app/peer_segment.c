/* peer_segment: placeholder until the segment wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_segment_routes(struct app *app)
{
    (void)app;
    return 0;
}
