/* strtab: see strtab.h. The slot table holds entry index + 1 (0 = empty) and is kept at most
 * half full, so probes stay short. */
#include "store/strtab.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct entry {
    uint64_t hash;
    size_t off;
    uint32_t len, scope;
};

struct strtab {
    struct entry *e;
    size_t n, cap;
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *slots;
    size_t nslots; /* power of two */
};

struct strtab *strtab_new(void)
{
    return calloc(1, sizeof(struct strtab));
}

void strtab_free(struct strtab *t)
{
    if (!t) return;
    free(t->e);
    free(t->arena);
    free(t->slots);
    free(t);
}

void strtab_clear(struct strtab *t)
{
    t->n = 0;
    t->arena_len = 0;
    if (t->slots) memset(t->slots, 0, t->nslots * sizeof *t->slots);
}

static uint64_t hash_of(uint32_t scope, const char *s, uint32_t len)
{
    return XXH3_64bits_withSeed(s, len, scope);
}

static int64_t lookup(const struct strtab *t, uint64_t h, uint32_t scope, const char *s,
                      uint32_t len, size_t *slot_out)
{
    if (!t->nslots) {
        *slot_out = 0;
        return -1;
    }
    size_t mask = t->nslots - 1, i = (size_t)h & mask;
    for (;;) {
        uint32_t v = t->slots[i];
        if (!v) {
            *slot_out = i;
            return -1;
        }
        const struct entry *e = &t->e[v - 1];
        if (e->hash == h && e->len == len && e->scope == scope &&
            (len == 0 || memcmp(t->arena + e->off, s, len) == 0)) /* arena may be NULL */
            return v - 1;
        i = (i + 1) & mask;
    }
}

int64_t strtab_find(const struct strtab *t, uint32_t scope, const char *s, uint32_t len)
{
    size_t slot;
    return lookup(t, hash_of(scope, s, len), scope, s, len, &slot);
}

static void rehash(struct strtab *t)
{
    memset(t->slots, 0, t->nslots * sizeof *t->slots);
    size_t mask = t->nslots - 1;
    for (size_t k = 0; k < t->n; k++) {
        size_t i = (size_t)t->e[k].hash & mask;
        while (t->slots[i]) i = (i + 1) & mask;
        t->slots[i] = (uint32_t)(k + 1);
    }
}

static bool grow_slots(struct strtab *t)
{
    size_t ns = t->nslots ? t->nslots * 2 : 1024;
    uint32_t *s = malloc(ns * sizeof *s);
    if (!s) return false;
    free(t->slots);
    t->slots = s;
    t->nslots = ns;
    rehash(t);
    return true;
}

int64_t strtab_intern(struct strtab *t, uint32_t scope, const char *s, uint32_t len,
                      bool *created)
{
    uint64_t h = hash_of(scope, s, len);
    size_t slot;
    int64_t idx = lookup(t, h, scope, s, len, &slot);
    if (created) *created = false;
    if (idx >= 0) return idx;
    if (t->n >= STRTAB_ENTRIES_MAX) return -1;
    if ((t->n + 1) * 2 > t->nslots) {
        if (!grow_slots(t)) return -1;
        lookup(t, h, scope, s, len, &slot);
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        struct entry *e = realloc(t->e, cap * sizeof *e);
        if (!e) return -1;
        t->e = e;
        t->cap = cap;
    }
    if (t->arena_len + len > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + len) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return -1;
        t->arena = a;
        t->arena_cap = cap;
    }
    if (len) memcpy(t->arena + t->arena_len, s, len);
    t->e[t->n] = (struct entry){.hash = h, .off = t->arena_len, .len = len, .scope = scope};
    t->arena_len += len;
    t->slots[slot] = (uint32_t)(t->n + 1);
    if (created) *created = true;
    return (int64_t)t->n++;
}

const char *strtab_str(const struct strtab *t, uint32_t idx, uint32_t *len)
{
    *len = t->e[idx].len;
    return t->arena ? t->arena + t->e[idx].off : "";
}

uint32_t strtab_scope(const struct strtab *t, uint32_t idx)
{
    return t->e[idx].scope;
}

size_t strtab_count(const struct strtab *t)
{
    return t->n;
}

size_t strtab_bytes(const struct strtab *t)
{
    return t->arena_cap + t->cap * sizeof(struct entry) + t->nslots * sizeof(uint32_t);
}

void strtab_truncate(struct strtab *t, size_t n)
{
    if (n >= t->n) return;
    t->n = n;
    t->arena_len = n ? t->e[n - 1].off + t->e[n - 1].len : 0;
    if (t->nslots) rehash(t);
}
