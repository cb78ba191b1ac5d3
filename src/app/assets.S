/*
 * The dashboard's and the tracker's static files, embedded verbatim with .incbin (the same
 * scheme as src/ingest/datasets.S: a start and an end symbol per blob, then one NUL byte that is
 * not counted). dashboard.c compresses them once at start and serves them.
 *
 * Our own sources live in src/app/dashboard/ and src/app/tracker/; uPlot (the charts) comes from
 * third_party/data/, fetched by scripts/fetch_data.sh by pinned version and checksum. Including
 * datasets.h (rewritten when a pinned version changes) makes -MMD reassemble this file then; the
 * Makefile lists our own asset files as prerequisites of assets.o, since .incbin files are not
 * seen by the compiler's dependency output. Paths are relative to the repository root.
 */
#include "../../third_party/data/datasets.h"

#define TALLY_ASSET(sym, path)              \
    .section .rodata.tally_assets, "a";     \
    .balign 16;                             \
    .global sym##_start;                    \
    .type sym##_start, @object;             \
sym##_start:;                               \
    .incbin path;                           \
    .global sym##_end;                      \
    .type sym##_end, @object;               \
sym##_end:;                                 \
    .byte 0

TALLY_ASSET(tally_asset_tracker_js, "src/app/tracker/script.js")
TALLY_ASSET(tally_asset_index_html, "src/app/dashboard/index.html")
TALLY_ASSET(tally_asset_app_js, "src/app/dashboard/app.js")
TALLY_ASSET(tally_asset_app_css, "src/app/dashboard/app.css")
TALLY_ASSET(tally_asset_uplot_js, "third_party/data/uPlot.iife.min.js")
TALLY_ASSET(tally_asset_uplot_css, "third_party/data/uPlot.min.css")

    .section .note.GNU-stack, "", @progbits
