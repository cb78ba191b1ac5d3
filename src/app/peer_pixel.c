/*
 * peer_pixel: Tally's no-script pixel, GET /p.gif, for pages that run no JavaScript (e-mail,
 * <noscript>, feeds, README badges):
 *     <img src="https://tally.example.com/p.gif?site=example.com&url=https%3A%2F%2Fexample.com%2F"
 *          alt="" width="1" height="1">
 *
 * QUERY PARAMETERS (percent-encoded; '+' is a space):
 *   site (or domain)   required: the site's name or one of its ids
 *   url                the page, an absolute http(s) URL <= 2048 bytes; absent: the request's
 *                      Referer header when it is one (browsers send the embedding page, often
 *                      cut to its origin across sites); required for pageviews
 *   referrer (or ref)  the page's referrer, <= 2048 bytes
 *   name               event name <= 120 bytes, default "pageview"
 *   props              a JSON object of custom properties (Plausible's loose rules, peer_util.h)
 * Repeated parameters: the first wins. Unknown parameters (cache busters) are ignored. The
 * event time is the arrival time; the visitor is the request's IP and User-Agent as for any
 * browser event (per-IP rate limit included).
 *
 * ANSWERS. Every answer, success or refusal, carries the same transparent 1x1 GIF and headers
 * that forbid caching (each view must reach the server), so a page never shows a broken image
 * whatever happens. The status tells the truth for monitors and curl users, and an
 * X-Tally-Error header says why: 200 recorded (after the durable append), 400 invalid
 * parameters, 404 unknown site, 429 rate limited (Retry-After), 503 unavailable. Nothing is
 * appended on any refusal. HEAD gets the headers and records nothing (link checkers).
 *
 * THREADS. The handler runs on an HTTP worker; the decoded strings live on its stack until
 * ingest_submit returns.
 */
#include <stdio.h>
#include <string.h>

#include "app/ingest.h"
#include "app/peer_util.h"
#include "app/peers.h"
#include "core/json_arena.h"
#include "ingest/timefmt.h"
#include "ingest/url.h"
#include "tally/error.h"

#define PIXEL_PROPS_BYTES_MAX 8192

#define PIXEL_HEADERS                                                                              \
    "Cache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n"                            \
    "Pragma: no-cache\r\n"                                                                         \
    "Expires: 0\r\n"                                                                               \
    "Cross-Origin-Resource-Policy: cross-origin\r\n"

static void respond_gif(struct http_exchange *ex, int status, const char *error,
                        const char *extra_headers)
{
    char hdr[512];
    char val[256] = "";
    if (error) peer_header_value(val, sizeof val, error);
    snprintf(hdr, sizeof hdr, PIXEL_HEADERS "%s%s%s%s", error ? "X-Tally-Error: " : "", val,
             error ? "\r\n" : "", extra_headers ? extra_headers : "");
    http_exchange_complete(ex, status, "image/gif", peer_gif(), PEER_GIF_BYTES, hdr);
}

static void pixel_ok(void *arg, struct http_exchange *ex, uint32_t accepted)
{
    (void)arg;
    (void)accepted;
    respond_gif(ex, 200, NULL, NULL);
}

static void pixel_error(void *arg, struct http_exchange *ex, int status, const char *msg, int index,
                        const char *extra_headers)
{
    (void)arg;
    (void)index;
    respond_gif(ex, status, msg, extra_headers);
}

/* One query parameter (first of two names) as text: 0 found, 1 absent, -1 invalid (message in
 * *err). */
static int param(const struct http_request *req, const char *a, const char *b, char *out,
                 size_t cap, size_t max, size_t *len, const char **err)
{
    int rc = http_request_query(req, a, out, cap, len);
    if (rc == TALLY_ENOENT && b) rc = http_request_query(req, b, out, cap, len);
    if (rc == TALLY_ENOENT) return 1;
    if (rc == TALLY_ETOOBIG || (rc == 0 && *len > max)) {
        *err = "a parameter is longer than allowed";
        return -1;
    }
    if (rc != 0 || strlen(out) != *len || !event_text_valid(out, *len)) {
        *err = "a parameter is not valid percent-encoded UTF-8";
        return -1;
    }
    return 0;
}

struct pixel_params {
    char site[EVENT_SITE_BYTES_MAX + 1];
    char url[EVENT_URL_BYTES_MAX + 2];
    char referrer[EVENT_REFERRER_BYTES_MAX + 2];
    char name[EVENT_NAME_BYTES_MAX + 2];
    char props[PIXEL_PROPS_BYTES_MAX + 2];
};

/* Fills ne from the query; NULL or the reason for a 400. */
static const char *decode(const struct http_request *req, struct pixel_params *pp,
                          struct native_event *ne, struct peer_props *props, cJSON **props_doc)
{
    const char *err = NULL;
    size_t len;
    struct event *ev = &ne->ev;
    int rc =
        param(req, "site", "domain", pp->site, sizeof pp->site, EVENT_SITE_BYTES_MAX, &len, &err);
    if (rc < 0) return err;
    if (rc > 0 || len == 0) return "parameter 'site' is required";
    ev->site = (struct event_str){pp->site, len};

    rc = param(req, "name", NULL, pp->name, sizeof pp->name, EVENT_NAME_BYTES_MAX, &len, &err);
    if (rc < 0) return "parameter 'name' must be at most 120 bytes of UTF-8";
    if (rc == 0 && len > 0) ev->name = (struct event_str){pp->name, len};

    rc = param(req, "url", NULL, pp->url, sizeof pp->url, EVENT_URL_BYTES_MAX, &len, &err);
    if (rc < 0) return err;
    struct url u;
    if (rc == 0 && len > 0) {
        if (url_parse(pp->url, len, &u) != 0)
            return "parameter 'url' must be an absolute "
                   "http(s) URL";
        ev->url = (struct event_str){pp->url, len};
    } else {
        const char *r = http_request_header(req, "referer");
        size_t rl = r ? strlen(r) : 0;
        if (rl && rl <= EVENT_URL_BYTES_MAX && event_text_valid(r, rl) && url_parse(r, rl, &u) == 0)
            ev->url = (struct event_str){r, rl};
    }
    if (ev->url.len == 0 && event_is_pageview(ev))
        return "parameter 'url' is required for pageviews (no usable Referer header either)";

    rc = param(req, "referrer", "ref", pp->referrer, sizeof pp->referrer, EVENT_REFERRER_BYTES_MAX,
               &len, &err);
    if (rc < 0) return err;
    if (rc == 0) ev->referrer = (struct event_str){pp->referrer, len};

    rc = param(req, "props", NULL, pp->props, sizeof pp->props, PIXEL_PROPS_BYTES_MAX, &len, &err);
    if (rc < 0) return err;
    if (rc == 0 && len > 0) {
        *props_doc = json_arena_parse(pp->props, len);
        if (!cJSON_IsObject(*props_doc)) return "parameter 'props' must be a JSON object";
        const char *perr = peer_props_take(*props_doc, props);
        if (perr) return perr;
        ev->props = props->props;
        ev->props_count = props->count;
    }
    return NULL;
}

static void on_pixel(struct http_request *req, struct http_exchange *ex, void *arg)
{
    struct app *app = arg;
    if (req->method == HTTP_HEAD) { /* link checkers: the headers, nothing recorded */
        respond_gif(ex, 200, NULL, NULL);
        return;
    }
    struct pixel_params pp;
    struct native_event ne;
    struct peer_props props;
    cJSON *props_doc = NULL;
    memset(&ne, 0, sizeof ne);
    event_init(&ne.ev);
    ne.ev.source = EVENT_SOURCE_PIXEL;
    ne.ev.ts_ms = ne.ev.received_ms = timefmt_now_ms();
    const char *err = decode(req, &pp, &ne, &props, &props_doc);
    if (err) {
        metrics_counter_add(app->events_dropped[DROP_INVALID], 1);
        respond_gif(ex, 400, err, NULL);
    } else {
        struct ingest_opts o = {.privileged = false};
        struct ingest_answer ans = {pixel_ok, pixel_error, NULL};
        ingest_submit(app, req, ex, &ne, 1, &o, &ans);
    }
    json_arena_delete(props_doc);
}

int peer_pixel_routes(struct app *app)
{
    struct http_route r = {
        .methods = HTTP_M(HTTP_GET),
        .path = "/p.gif",
        .cors = true,
        .name = "pixel",
        .handler = on_pixel,
        .arg = app,
    };
    return http_server_route(app->http, &r);
}
