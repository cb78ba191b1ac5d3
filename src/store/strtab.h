/*
 * strtab: an intern table of byte strings, each in a 32-bit scope (a site id, a dimension...):
 * (scope, bytes) -> dense index 0, 1, 2, ... in insertion order. Strings are copied into one
 * growable arena; entries are found through an open-addressing table of XXH3-64 hashes (with
 * a full comparison, so distinct strings never share an index). Memory is what was put in plus
 * ~24 bytes per entry; callers bound it (strtab_bytes) and clear the table when it is too big.
 * One thread at a time; no global state.
 */
#ifndef TALLY_STORE_STRTAB_H
#define TALLY_STORE_STRTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STRTAB_ENTRIES_MAX (1u << 30)

struct strtab;

struct strtab *strtab_new(void);
void strtab_free(struct strtab *t); /* NULL is a no-op */
void strtab_clear(struct strtab *t);

/* Index of (scope, s[0..len)), or -1 when absent. */
int64_t strtab_find(const struct strtab *t, uint32_t scope, const char *s, uint32_t len);
/* Index of (scope, s[0..len)), inserting it when absent (*created tells; may be NULL).
 * -1 on allocation failure or at STRTAB_ENTRIES_MAX. */
int64_t strtab_intern(struct strtab *t, uint32_t scope, const char *s, uint32_t len,
                      bool *created);
/* The string of an index: pointer valid until the next insertion; *len its length. */
const char *strtab_str(const struct strtab *t, uint32_t idx, uint32_t *len);
uint32_t strtab_scope(const struct strtab *t, uint32_t idx);
size_t strtab_count(const struct strtab *t);
/* Bytes held (arena + tables). */
size_t strtab_bytes(const struct strtab *t);
/* Drops every entry with index >= n (undo of recent insertions). */
void strtab_truncate(struct strtab *t, size_t n);

#endif
