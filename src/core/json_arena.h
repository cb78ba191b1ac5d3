/*
 * json_arena: parse a JSON text into a cJSON tree whose nodes and strings come from a block
 * owned by the calling thread, instead of one malloc (and later one free) per node and per
 * string. The peer ingest formats parse one request body per call, with tens of nodes each;
 * malloc/free of those nodes was the largest item in their profiles.
 *
 * HOW. cJSON 1.7 has no per-parse allocator, only process-global hooks (cJSON_InitHooks). This
 * module installs its hooks once, before main() runs (a constructor, so before any thread can
 * use cJSON), and the hooks are plain malloc/free except in two cases:
 *   - allocation, while the calling thread is inside json_arena_parse: the next bytes of that
 *     thread's block (JSON_ARENA_BYTES; when it is full, malloc as usual);
 *   - release of a pointer that lies inside the calling thread's block: nothing is freed, a
 *     count of live allocations drops, and when it reaches zero (every tree parsed into the
 *     block has been deleted) the block is reused from its start.
 * Every other cJSON user in the process (other threads, trees built with cJSON_Create*, the
 * strings cJSON_Print returns, trees parsed with cJSON_Parse*) gets malloc/free unchanged; the
 * only difference is that cJSON then grows print buffers by allocate-copy-free instead of
 * realloc (cJSON disables realloc when its hooks are not malloc/free themselves).
 *
 * RULES for a tree returned by json_arena_parse (nothing checks them; the callers keep them):
 *   1. cJSON_Delete it on the thread that parsed it (a block is per thread; on another thread
 *      its nodes would be passed to free());
 *   2. do not move its nodes into a tree that outlives it (cJSON_Detach* + cJSON_Add*), and do
 *      not keep pointers into it after cJSON_Delete (the block is reused);
 *   3. a tree that is never deleted only keeps the block from being reset: parses on that
 *      thread fill the rest of it and then use malloc (correct, just slower).
 * Under ASan a read of a deleted tree's node is not reported while the block is in use (the
 * block is one allocation); the peers' tests pass under ASan with the block in place.
 * Nothing else changes: the same parser with the same limits and the same result (the tree is
 * what cJSON_ParseWithLength returns for the same bytes). Any thread.
 */
#ifndef TALLY_CORE_JSON_ARENA_H
#define TALLY_CORE_JSON_ARENA_H

#include <cjson/cJSON.h>
#include <stddef.h>

#define JSON_ARENA_BYTES (128 * 1024)

/* cJSON_ParseWithLength(text, len), the tree allocated as described above; NULL when the text
 * is not JSON (or on OOM). The caller owns the tree and frees it with cJSON_Delete, on this
 * thread. */
cJSON *json_arena_parse(const char *text, size_t len);

/* Bytes of the calling thread's block in use (0 when every tree parsed into it is deleted).
 * For tests. */
size_t json_arena_used(void);

#endif
