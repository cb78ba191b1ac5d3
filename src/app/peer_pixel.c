/* peer_pixel: placeholder until the pixel wire format is implemented (see peers.h). */
#include "app/peers.h"

int peer_pixel_routes(struct app *app)
{
    (void)app;
    return 0;
}
