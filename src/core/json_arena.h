/*
 * json_arena: parse a JSON text into a cJSON tree whose nodes and strings come from a block
 * owned by the calling thread, instead of one malloc (and later one free) per node and per
 * string. The peer ingest formats parse one request body per call, with tens of nodes each;
 * malloc/free of those nodes, then cJSON's parser itself, were the largest items in their
 * profiles.
 *
 * HOW. json_arena_parse is its own parser of cJSON's grammar (json_arena.c lists what it keeps
 * of cJSON's behaviour): the tree it returns is, node for node, what cJSON_ParseWithLength
 * returns for the same bytes (same types, strings, numbers to the bit, valueint, list links),
 * and it refuses the same texts (tests/fuzz/fuzz_json_arena.c checks both against the installed
 * cJSON on every input; make test replays its corpus). Its nodes and strings are
 * bump-allocated from the thread's block (JSON_ARENA_BYTES; when it is full, malloc as usual).
 * cJSON's release hook (installed once, before main() runs, so before any thread can use cJSON) is
 * free() except for a pointer inside the calling thread's block: nothing is freed, a count of live
 * allocations drops, and when it reaches zero (every tree parsed into the block has been deleted)
 * the block is reused from its start. cJSON's allocation hook stays malloc: every other cJSON user
 * in the process (trees built with cJSON_Create*, the strings cJSON_Print returns, trees parsed
 * with cJSON_Parse*) is unchanged, except that cJSON then grows print buffers by allocate-copy-free
 * instead of realloc (cJSON disables realloc when its hooks are not malloc/free themselves).
 *
 * RULES for a tree returned by json_arena_parse (nothing checks them; the callers keep them):
 *   1. delete it (json_arena_delete or cJSON_Delete) on the thread that parsed it (a block is
 *      per thread; on another thread its nodes would be passed to free());
 *   2. do not move its nodes into a tree that outlives it (cJSON_Detach* + cJSON_Add*), and do
 *      not keep pointers into it after deleting it (the block is reused);
 *   3. a tree that is never deleted only keeps the block from being reset: parses on that
 *      thread fill the rest of it and then use malloc (correct, just slower);
 *   4. json_arena_delete only for a tree whose structure was not changed (no node or string
 *      added, removed or replaced; changing bytes of a string in place is fine): it releases
 *      the count of allocations the parse made, without walking the tree.
 * Under ASan a read of a deleted tree's node is not reported while the block is in use (the
 * block is one allocation); the peers' tests pass under ASan with the block in place. Any
 * thread.
 */
#ifndef TALLY_CORE_JSON_ARENA_H
#define TALLY_CORE_JSON_ARENA_H

#include <cjson/cJSON.h>
#include <stddef.h>

#define JSON_ARENA_BYTES (128 * 1024)

/* cJSON_ParseWithLength(text, len), the tree allocated as described above; NULL when the text
 * is not JSON (or on OOM). The caller owns the tree and frees it with json_arena_delete or
 * cJSON_Delete, on this thread. */
cJSON *json_arena_parse(const char *text, size_t len);

/* Releases a tree from json_arena_parse (rule 4 above): one of the latest JSON_ARENA_TREES
 * (json_arena.c) trees parsed on this thread without a walk, any other tree with
 * cJSON_Delete. NULL is a no-op. */
void json_arena_delete(cJSON *root);

/* Bytes of the calling thread's block in use (0 when every tree parsed into it is deleted).
 * For tests. */
size_t json_arena_used(void);

#endif
