#include "core/keys.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "tally/error.h"

#define DIGEST_BYTES 32

enum key_scope key_scope_parse(const char *name)
{
    if (!strcmp(name, "read")) return KEY_SCOPE_READ;
    if (!strcmp(name, "write")) return KEY_SCOPE_WRITE;
    if (!strcmp(name, "admin")) return KEY_SCOPE_ADMIN;
    return KEY_SCOPE_NONE;
}

const char *key_scope_name(enum key_scope scope)
{
    switch (scope) {
    case KEY_SCOPE_READ: return "read";
    case KEY_SCOPE_WRITE: return "write";
    case KEY_SCOPE_ADMIN: return "admin";
    default: return "none";
    }
}

int key_scope_allows(enum key_scope granted, enum key_scope needed)
{
    if (needed == KEY_SCOPE_NONE) return 1;
    if (granted == KEY_SCOPE_ADMIN) return 1;
    return granted == needed;
}

static void digest_of(const char *key, size_t len, unsigned char out[DIGEST_BYTES])
{
    crypto_generichash(out, DIGEST_BYTES, (const unsigned char *)key, len, NULL, 0);
}

int key_digest_line(const char *key, enum key_scope scope, char line[KEY_DIGEST_LINE_BYTES])
{
    if (sodium_init() < 0) return TALLY_EIO;
    unsigned char d[DIGEST_BYTES];
    char hex[DIGEST_BYTES * 2 + 1];
    digest_of(key, strlen(key), d);
    sodium_bin2hex(hex, sizeof hex, d, sizeof d);
    snprintf(line, KEY_DIGEST_LINE_BYTES, "%s:%s", key_scope_name(scope), hex);
    return 0;
}

int key_generate(enum key_scope scope, char key[KEY_TEXT_BYTES], char line[KEY_DIGEST_LINE_BYTES])
{
    if (sodium_init() < 0) return TALLY_EIO;
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    memcpy(key, "tly_", 4);
    sodium_bin2base64(key + 4, KEY_TEXT_BYTES - 4, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    return key_digest_line(key, scope, line);
}

static void check_list(const struct config_list *l, const unsigned char d[DIGEST_BYTES],
                       enum key_scope *best)
{
    if (!l) return;
    for (int i = 0; i < l->count; i++) {
        const char *item = l->items[i];
        const char *colon = strchr(item, ':');
        if (!colon) continue;
        char scope_name[8];
        size_t sn = (size_t)(colon - item);
        if (sn == 0 || sn >= sizeof scope_name) continue;
        memcpy(scope_name, item, sn);
        scope_name[sn] = 0;
        enum key_scope scope = key_scope_parse(scope_name);
        unsigned char want[DIGEST_BYTES];
        size_t got = 0;
        if (scope == KEY_SCOPE_NONE ||
            sodium_hex2bin(want, sizeof want, colon + 1, strlen(colon + 1), NULL, &got, NULL) != 0 ||
            got != DIGEST_BYTES)
            continue;
        if (sodium_memcmp(want, d, DIGEST_BYTES) == 0 && scope > *best) *best = scope;
    }
}

enum key_scope key_verify(const char *key, size_t len, const struct config_list *global,
                          const struct config_list *site)
{
    if (len == 0 || len > 256 || sodium_init() < 0) return KEY_SCOPE_NONE;
    unsigned char d[DIGEST_BYTES];
    digest_of(key, len, d);
    enum key_scope best = KEY_SCOPE_NONE;
    check_list(global, d, &best);
    check_list(site, d, &best);
    return best;
}
