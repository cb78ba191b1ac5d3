/*
 * keys: API keys. A key is "tly_" + 43 base64url characters (32 random bytes). Only its digest is
 * stored: BLAKE2b-256 (libsodium crypto_generichash) in hex, written "SCOPE:DIGEST" in the
 * configuration ([auth] key_digests globally, or [site NAME] key_digests for one site).
 * Scopes: read (queries), write (privileged ingest), admin (both plus operations).
 *
 * Verification hashes the presented key once and compares it with every configured digest using
 * sodium_memcmp (constant time), never stopping early, so timing does not reveal which digest
 * matched or how much of one did. Keys are never logged. Any thread (after sodium_init()).
 */
#ifndef TALLY_KEYS_H
#define TALLY_KEYS_H

#include <stddef.h>

#include "core/config.h"

enum key_scope { KEY_SCOPE_NONE = 0, KEY_SCOPE_READ = 1, KEY_SCOPE_WRITE = 2, KEY_SCOPE_ADMIN = 3 };

#define KEY_TEXT_BYTES 48          /* "tly_" + 43 + NUL, rounded */
#define KEY_DIGEST_LINE_BYTES 80   /* "admin:" + 64 hex + NUL */

/* Parses "read|write|admin"; KEY_SCOPE_NONE when unknown. */
enum key_scope key_scope_parse(const char *name);
const char *key_scope_name(enum key_scope scope);

/* New random key and its "SCOPE:DIGEST" line. 0, or TALLY_EIO if libsodium cannot start. */
int key_generate(enum key_scope scope, char key[KEY_TEXT_BYTES], char line[KEY_DIGEST_LINE_BYTES]);

/* The "SCOPE:DIGEST" line for an existing key. */
int key_digest_line(const char *key, enum key_scope scope, char line[KEY_DIGEST_LINE_BYTES]);

/*
 * The highest scope that `key` (len bytes) has among the digest lists (each may be NULL):
 * the global list and a site's list. Malformed digest lines never match.
 */
enum key_scope key_verify(const char *key, size_t len, const struct config_list *global,
                          const struct config_list *site);

/* Whether `granted` covers `needed` (admin covers read and write). */
int key_scope_allows(enum key_scope granted, enum key_scope needed);

#endif
