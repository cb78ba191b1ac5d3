/*
 * Embedded data sets: the files fetched by scripts/fetch_data.sh into third_party/data/ are
 * copied verbatim into .rodata with .incbin. Each blob is bracketed by a start and an end symbol
 * (see dataset.h) and followed by one NUL byte that is not counted, so text parsers may treat a
 * blob as a C string.
 *
 * Rebuild rule: .incbin files are invisible to the compiler's dependency output, so this file
 * #includes third_party/data/datasets.h, a manifest the fetch script rewrites (versions and
 * tarball checksums) exactly when the data changes; -MMD records that header, and make then
 * reassembles this file. .incbin paths are relative to the directory make runs in (the repo root).
 */
#include "../../third_party/data/datasets.h"

#define TALLY_BLOB(sym, path)               \
    .section .rodata.tally_data, "a";       \
    .balign 16;                             \
    .global sym##_start;                    \
    .type sym##_start, @object;             \
sym##_start:;                               \
    .incbin path;                           \
    .global sym##_end;                      \
    .type sym##_end, @object;               \
sym##_end:;                                 \
    .byte 0

TALLY_BLOB(tally_data_uap_regexes, "third_party/data/regexes.yaml")
TALLY_BLOB(tally_data_crawler_agents, "third_party/data/crawler-user-agents.json")
TALLY_BLOB(tally_data_referers, "third_party/data/referers.yml")

    .section .rodata.tally_data, "a"
    .global tally_data_versions
    .type tally_data_versions, @object
tally_data_versions:
    .ascii "uap-core ", TALLY_DATA_UAP_CORE_VERSION
    .ascii ", crawler-user-agents ", TALLY_DATA_CRAWLER_USER_AGENTS_VERSION
    .asciz ", referer-parser ", TALLY_DATA_REFERER_PARSER_VERSION

    .section .note.GNU-stack, "", @progbits
