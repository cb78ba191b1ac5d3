/*
 * json_arena: see json_arena.h. The state is per thread (_Thread_local), so the hooks take no
 * lock; a block is malloc'd on a thread's first json_arena_parse and freed when the thread
 * exits (pthread key destructor).
 */
#include "core/json_arena.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#define JSON_ARENA_ALIGN 16

struct json_arena {
    char *base;  /* JSON_ARENA_BYTES, or NULL */
    size_t used; /* bytes handed out since the block was last empty */
    size_t live; /* allocations handed out and not yet released */
    bool active; /* inside json_arena_parse */
};

static _Thread_local struct json_arena g_arena;
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static bool in_block(const struct json_arena *a, const void *p)
{
    uintptr_t b = (uintptr_t)a->base, q = (uintptr_t)p;
    return a->base && q >= b && q < b + JSON_ARENA_BYTES;
}

static void *arena_malloc(size_t n)
{
    struct json_arena *a = &g_arena;
    if (a->active && a->base) {
        size_t need = (n + JSON_ARENA_ALIGN - 1) & ~(size_t)(JSON_ARENA_ALIGN - 1);
        if (need >= n && need <= JSON_ARENA_BYTES - a->used) {
            void *p = a->base + a->used;
            a->used += need;
            a->live++;
            return p;
        }
    }
    return malloc(n);
}

static void arena_free(void *p)
{
    struct json_arena *a = &g_arena;
    if (!in_block(a, p)) {
        free(p);
        return;
    }
    if (--a->live == 0) a->used = 0;
}

/* Before main(): no other thread can be inside cJSON while the hooks change. */
__attribute__((constructor)) static void json_arena_install(void)
{
    cJSON_Hooks h = {arena_malloc, arena_free};
    cJSON_InitHooks(&h);
}

static void block_free(void *p)
{
    /* Thread exit. A tree still alive here broke rule 1 of the header; keep its memory. */
    if (g_arena.live == 0) free(p);
    g_arena.base = NULL;
}

static void key_make(void)
{
    pthread_key_create(&g_key, block_free);
}

cJSON *json_arena_parse(const char *text, size_t len)
{
    struct json_arena *a = &g_arena;
    if (!a->base) {
        pthread_once(&g_once, key_make);
        a->base = malloc(JSON_ARENA_BYTES);
        if (a->base) pthread_setspecific(g_key, a->base);
    }
    a->active = true;
    cJSON *root = cJSON_ParseWithLength(text, len);
    a->active = false;
    return root;
}

size_t json_arena_used(void)
{
    return g_arena.used;
}
