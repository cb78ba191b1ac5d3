/*
 * Data sets embedded into the binary at build time (src/ingest/datasets.S, from the files that
 * scripts/fetch_data.sh fetched into third_party/data/ at pinned versions and checksums).
 *
 * Each blob is read-only static memory for the life of the process, owned by nobody (never
 * free it); any thread may read it at any time. data[len] is a NUL byte, so a blob is also a
 * C string (the files hold no NUL themselves).
 */
#ifndef TALLY_INGEST_DATASET_H
#define TALLY_INGEST_DATASET_H

#include <stddef.h>

typedef struct dataset_blob {
    const char *data;
    size_t len;
} dataset_blob;

extern const char tally_data_uap_regexes_start[], tally_data_uap_regexes_end[];
extern const char tally_data_crawler_agents_start[], tally_data_crawler_agents_end[];
extern const char tally_data_referers_start[], tally_data_referers_end[];
extern const char tally_data_versions[];

/* uap-core regexes.yaml (YAML). */
static inline dataset_blob dataset_uap_regexes(void)
{
    return (dataset_blob){tally_data_uap_regexes_start,
                          (size_t)(tally_data_uap_regexes_end - tally_data_uap_regexes_start)};
}

/* crawler-user-agents.json (JSON array of {"pattern": ...}). */
static inline dataset_blob dataset_crawler_agents(void)
{
    return (dataset_blob){
        tally_data_crawler_agents_start,
        (size_t)(tally_data_crawler_agents_end - tally_data_crawler_agents_start)};
}

/* referer-parser referers.yml (YAML: medium -> source -> domains). */
static inline dataset_blob dataset_referers(void)
{
    return (dataset_blob){tally_data_referers_start,
                          (size_t)(tally_data_referers_end - tally_data_referers_start)};
}

struct yaml_document_s;

/*
 * Parses an embedded YAML data set into *doc (caller-owned: yaml_document_delete) and checks that
 * its root is a mapping. `what` names the file in the diag message on failure. 0, TALLY_ENOMEM,
 * or TALLY_ECORRUPT (nothing to delete then). Startup only (any one thread).
 */
int dataset_yaml_load(dataset_blob blob, const char *what, struct yaml_document_s *doc);

/* "uap-core 0.18.0, crawler-user-agents 1.60.0, referer-parser 0.0.3": for --version and logs. */
static inline const char *dataset_versions(void)
{
    return tally_data_versions;
}

#endif
