/*
 * Fuzz target: json_arena_parse (core/json_arena.h), differentially against cJSON.
 *
 * json_arena_parse is our own parser of cJSON's grammar for the peer ingest formats (request
 * bodies from the internet). Its contract is that it returns, node for node, the tree that
 * cJSON_ParseWithLength returns for the same bytes, and refuses the same texts. For every
 * input this target checks exactly that: both NULL, or both trees equal in types, keys, string
 * values, valueint, valuedouble to the bit, child/next links and every node's prev link (cJSON
 * keeps the first child's prev pointing at the last sibling).
 *
 * It also exercises the arena's life cycle: a few trees stay alive across inputs and are
 * released either way (json_arena_delete without a walk, or cJSON_Delete), and once every held
 * tree is released the thread's block must be empty again (json_arena_used() == 0).
 *
 * The input is copied into an allocation of exactly its size, so ASan reports any read past
 * the text (neither parser may rely on a terminating NUL).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_arena.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

#define HELD_TREES 3    /* trees kept alive across inputs */
#define RELEASE_EVERY 7 /* inputs between two full releases (then the block must be empty) */
#define DEPTH_MAX 2000  /* deeper than either parser accepts (cJSON's nesting limit: 1000) */

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Lists starting at a and b are equal, recursively; first_a/first_b are their heads. */
static int same_list(const cJSON *a, const cJSON *b, int depth)
{
    CHECK(depth < DEPTH_MAX);
    const cJSON *first_a = a, *first_b = b;
    for (; a && b; a = a->next, b = b->next) {
        if (a->type != b->type || a->valueint != b->valueint) return 0;
        if (memcmp(&a->valuedouble, &b->valuedouble, sizeof a->valuedouble) != 0) return 0;
        if (!same_str(a->string, b->string) || !same_str(a->valuestring, b->valuestring)) return 0;
        if (!!a->child != !!b->child) return 0;
        if (a->child && !same_list(a->child, b->child, depth + 1)) return 0;
        /* prev links: inside the list each node's prev->next is itself; the head's prev is
         * the last node (for children; a root has no siblings) */
        if (a != first_a && (a->prev->next != a || b->prev->next != b)) return 0;
        if (!a->next && depth > 0 && (first_a->prev != a || first_b->prev != b)) return 0;
    }
    return !a && !b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cJSON *held[HELD_TREES];
    static unsigned calls;

    char *text = malloc(size ? size : 1);
    CHECK(text);
    if (size) memcpy(text, data, size);
    cJSON *ref = cJSON_ParseWithLength(text, size);
    cJSON *got = json_arena_parse(text, size);
    CHECK(!!ref == !!got);
    if (ref) CHECK(same_list(ref, got, 0));
    cJSON_Delete(ref);
    free(text); /* the tree owns copies of its strings: the text may go */

    unsigned slot = calls % HELD_TREES;
    if (held[slot]) {
        if ((calls + size) % 2)
            json_arena_delete(held[slot]);
        else
            cJSON_Delete(held[slot]);
    }
    held[slot] = got;
    if (++calls % RELEASE_EVERY == 0) {
        for (int i = 0; i < HELD_TREES; i++) {
            json_arena_delete(held[i]);
            held[i] = NULL;
        }
        CHECK(json_arena_used() == 0);
    }
    return 0;
}
