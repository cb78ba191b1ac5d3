/* Shared loading of the embedded YAML data sets (uap-core, referer-parser). */
#include "ingest/dataset.h"

#include <yaml.h>

#include "core/diag.h"
#include "tally/error.h"

int dataset_yaml_load(dataset_blob blob, const char *what, struct yaml_document_s *doc)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return TALLY_ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)blob.data, blob.len);
    if (!yaml_parser_load(&parser, doc)) {
        diag_error("%s: %s at line %zu", what, parser.problem ? parser.problem : "?",
                   (size_t)parser.problem_mark.line + 1);
        yaml_parser_delete(&parser);
        return TALLY_ECORRUPT;
    }
    yaml_parser_delete(&parser);
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || root->type != YAML_MAPPING_NODE) {
        diag_error("%s: the root is not a mapping", what);
        yaml_document_delete(doc);
        return TALLY_ECORRUPT;
    }
    return TALLY_OK;
}
