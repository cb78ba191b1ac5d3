/*
 * Fuzz target for the rollup cell decoders (src/rollup/cell.h): the input is a stored cell
 * value. cell_decode (the engine's) and cell_view_parse + cell_union_add_view (the reads') must
 * never crash or read out of bounds, must accept exactly the same values, and on an accepted
 * value with one kind of visitor set (and no sampling) must count the same visitors; a union
 * saved and loaded again counts the same. The seed corpus (tests/fuzz/corpus/fuzz_cell/) holds
 * real cells of every kind written by test_rollup_cell (when CELL_FUZZ_SEEDS names a directory).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rollup/cell.h"
#include "tally/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cell c;
    int rd = cell_decode(data, size, &c);
    if (rd != TALLY_OK && rd != TALLY_ECORRUPT && rd != TALLY_ENOMEM) abort();
    struct cell_view v;
    int rv = cell_view_parse(data, size, &v);
    if (rv != TALLY_OK && rv != TALLY_ECORRUPT) abort();
    struct cell_union *u = cell_union_new();
    if (!u) abort();
    if (rv == TALLY_OK) rv = cell_union_add_view(u, &v);
    if (rv != TALLY_OK && rv != TALLY_ECORRUPT && rv != TALLY_ENOMEM) abort();
    if (rd == TALLY_ENOMEM || rv == TALLY_ENOMEM) goto out;
    if ((rd == TALLY_OK) != (rv == TALLY_OK)) abort(); /* the two accept the same values */
    if (rd != TALLY_OK) goto out;
    if (c.pageviews != v.pageviews || c.events != v.events || c.visits != v.visits ||
        c.bounces != v.bounces || c.duration_ms != v.duration_ms)
        abort();
    /* the union saved and loaded again counts the same */
    struct cbuf st = {0};
    struct cell_union *again = cell_union_new();
    if (!again) abort();
    int rs = cell_union_save(u, &st);
    if (rs == TALLY_OK) {
        size_t used = 0;
        if (cell_union_add_saved(again, st.p, st.len, &used) != TALLY_OK || used != st.len)
            abort();
        bool e1, e2;
        uint64_t n1 = cell_union_count(u, &e1), n2 = cell_union_count(again, &e2);
        if (n1 != n2 || e1 != e2) abort();
        bool one_kind = (c.hll != NULL) != c.has_ms;
        if (one_kind && c.level == 0) {
            bool ec;
            if (cell_visitors(&c, &ec) != n1 || ec != e1) abort();
        }
    } else if (rs != TALLY_ENOMEM) {
        abort();
    }
    cell_union_free(again);
    free(st.p);
    cell_free(&c);
out:
    cell_union_free(u);
    return 0;
}
