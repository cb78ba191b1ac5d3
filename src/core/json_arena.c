/*
 * json_arena: see json_arena.h. The state is per thread (_Thread_local), so nothing takes a
 * lock; a block is malloc'd on a thread's first json_arena_parse and freed when the thread
 * exits (pthread key destructor).
 *
 * THE PARSER. json_arena_parse does not call cJSON's parser: it is a copy of its grammar (cJSON
 * 1.7.15 as Debian 12 ships it, with the CVE-2023-26819 and CVE-2023-53154 fixes: numbers of any
 * length, no read past a trailing comma) that writes the same tree straight into the block. What
 * it keeps from cJSON, on purpose, because callers' answers depend on what is accepted:
 *   - whitespace is any byte <= 32 (NUL and control bytes included); a UTF-8 BOM is skipped
 *     when at least 5 bytes are given; bytes after the root value are ignored;
 *   - literals null/false/true; a number is the longest run of [0-9+-eE.] from a '-' or digit,
 *     read by strtod (with the locale's decimal point), which may stop early: "01" is 1,
 *     "1.e5" is 100000, "1e" is 1 followed by a stray 'e' (then an error in an array or
 *     object); valueint saturates at INT_MIN/INT_MAX;
 *   - a string ends at the first quote not preceded by an escaping backslash; raw control and
 *     NUL bytes are copied; escapes \b \f \n \r \t \" \\ \/ and \uXXXX (surrogate pairs
 *     joined; a lone low surrogate, or a high one without a low one, is an error; a \u whose
 *     four characters are not all hex digits decodes to code point 0, a NUL byte; fewer than
 *     six characters before the end of the string is an error); any other escape is an error;
 *   - arrays and objects nest at most CJSON_NESTING_LIMIT deep; no trailing commas; duplicate
 *     keys are all kept, in order; a node's prev is its predecessor and a first child's prev
 *     is the last child (cJSON's list convention).
 * What differs is only the cost: one bump allocation per node and string (no memset, no
 * locale lookup, no temporary number buffer), a memcpy for strings without escapes, and
 * integers and short decimals (at most 15 digits, no exponent) converted without strtod, with
 * the same result: m / 10^k with m < 2^53 and k <= 15 is exact in both operands, so the one
 * IEEE division rounds it exactly as strtod rounds the decimal. Checked by a differential run
 * against cJSON_ParseWithLength (millions of mutated SDK bodies, number texts and nesting
 * depths, every prefix of each seed; trees compared field by field, doubles by their bits).
 */
#include "core/json_arena.h"

#include <limits.h>
#include <locale.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JSON_ARENA_NODE_ALIGN 8
/* A number of at most this many characters is copied to the stack for strtod. */
#define JSON_NUMBER_STACK_BYTES 64
/* Integer and decimal fast path: at most this many digits (10^15 < 2^53). */
#define JSON_FAST_DIGITS_MAX 15
/* Trees per thread that json_arena_delete releases without a walk (the latest parsed). */
#define JSON_ARENA_TREES 4

/* A tree json_arena_delete can release by count: its root and its number of allocations,
 * all in the block. */
struct json_arena_tree {
    const cJSON *root;
    size_t allocs;
};

struct json_arena {
    char *base;    /* JSON_ARENA_BYTES, or NULL */
    size_t used;   /* bytes handed out since the block was last empty */
    size_t live;   /* allocations handed out and not yet released */
    bool spilled;  /* the parse in progress took memory from malloc */
    struct json_arena_tree trees[JSON_ARENA_TREES]; /* root NULL: free slot */
    unsigned next_tree;                             /* the slot the next tree takes */
};

static _Thread_local struct json_arena g_arena;
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static bool in_block(const struct json_arena *a, const void *p)
{
    uintptr_t b = (uintptr_t)a->base, q = (uintptr_t)p;
    return a->base && q >= b && q < b + JSON_ARENA_BYTES;
}

/* Every allocation in the block is released: it is reused from its start. */
static void block_reset(struct json_arena *a)
{
    a->used = 0;
    memset(a->trees, 0, sizeof a->trees);
}

/* cJSON's release hook: a pointer into the calling thread's block is counted, not freed. */
static void arena_free(void *p)
{
    struct json_arena *a = &g_arena;
    if (!in_block(a, p)) {
        free(p);
        return;
    }
    if (--a->live == 0) block_reset(a);
}

/* Before main(): no other thread can be inside cJSON while the hooks change. Allocation stays
 * malloc: every tree cJSON itself builds (cJSON_Create*, cJSON_Parse*, print buffers) is plain. */
__attribute__((constructor)) static void json_arena_install(void)
{
    cJSON_Hooks h = {malloc, arena_free};
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

/* n bytes at the given alignment from the block, else from malloc (NULL on OOM). */
static inline void *block_alloc(struct json_arena *a, size_t n, size_t align)
{
    size_t at = (a->used + align - 1) & ~(align - 1);
    if (a->base && at <= JSON_ARENA_BYTES && n <= JSON_ARENA_BYTES - at) {
        a->used = at + n;
        a->live++;
        return a->base + at;
    }
    a->spilled = true;
    return malloc(n);
}

/* ---- the parser (cJSON's grammar; see the top of the file) ---------------------------------- */

struct jp {
    const unsigned char *s;
    size_t len;
    size_t off;
    size_t depth;
    struct json_arena *a;
};

static bool parse_value(struct jp *p, cJSON *item);

static inline cJSON *node_new(struct jp *p)
{
    cJSON *n = block_alloc(p->a, sizeof *n, JSON_ARENA_NODE_ALIGN);
    if (n) *n = (cJSON){0};
    return n;
}

/* cJSON's buffer_skip_whitespace, including its step back when the text ends in whitespace. */
static inline void skip_ws(struct jp *p)
{
    size_t off = p->off, len = p->len;
    if (off >= len || p->s[off] > 32) return; /* compact JSON: nothing to skip */
    while (off < len && p->s[off] <= 32)
        off++;
    p->off = off == len ? off - 1 : off;
}

static unsigned hex4(const unsigned char *in)
{
    unsigned h = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = in[i];
        if (c >= '0' && c <= '9')
            h += (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F')
            h += 10u + (unsigned)(c - 'A');
        else if (c >= 'a' && c <= 'f')
            h += 10u + (unsigned)(c - 'a');
        else
            return 0; /* cJSON: an invalid digit makes the whole literal 0 */
        if (i < 3) h <<= 4;
    }
    return h;
}

/* One \uXXXX (or a surrogate pair) at in, before end: the UTF-8 bytes at *out. The characters
 * used, or 0 when invalid. */
static unsigned utf16_to_utf8(const unsigned char *in, const unsigned char *end,
                              unsigned char **out)
{
    if (end - in < 6) return 0;
    unsigned long cp;
    unsigned first = hex4(in + 2), used = 6;
    if (first >= 0xDC00 && first <= 0xDFFF) return 0;
    if (first >= 0xD800 && first <= 0xDBFF) {
        const unsigned char *second = in + 6;
        if (end - second < 6 || second[0] != '\\' || second[1] != 'u') return 0;
        unsigned low = hex4(second + 2);
        if (low < 0xDC00 || low > 0xDFFF) return 0;
        cp = 0x10000 + (((first & 0x3FFul) << 10) | (low & 0x3FF));
        used = 12;
    } else {
        cp = first;
    }
    unsigned char *o = *out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        *out = o + 1;
    } else if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        *out = o + 2;
    } else if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        *out = o + 3;
    } else {
        o[0] = (unsigned char)(0xF0 | (cp >> 18));
        o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[3] = (unsigned char)(0x80 | (cp & 0x3F));
        *out = o + 4;
    }
    return used;
}

#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGH 0x8080808080808080ULL

/* A mask with the high bit of each byte of w that equals b (and maybe of bytes above the
 * first such byte: the lowest set bit is exact). */
static inline uint64_t swar_eq(uint64_t w, unsigned char b)
{
    uint64_t x = w ^ (SWAR_ONES * b);
    return (x - SWAR_ONES) & ~x & SWAR_HIGH;
}

/* The common case of parse_string: no escape, and room in the block for the rest of the text.
 * The bytes are copied into the block while the closing quote is looked for, 8 at a time.
 * NULL (nothing allocated) when the string has an escape or does not end, or there is no
 * room: parse_string's general path then decides. */
static char *string_plain(struct jp *p, const unsigned char *in, const unsigned char *limit)
{
    struct json_arena *a = p->a;
    if (!a->base || (size_t)(limit - in) >= JSON_ARENA_BYTES - a->used) return NULL;
    unsigned char *out = (unsigned char *)a->base + a->used, *o = out;
    while (limit - in >= 8) {
        uint64_t w;
        memcpy(&w, in, 8);
        memcpy(o, &w, 8); /* o - out == in - first byte: within the room checked above */
        uint64_t hit = swar_eq(w, '"') | swar_eq(w, '\\');
        if (hit) {
            unsigned k = (unsigned)__builtin_ctzll(hit) / 8;
            in += k;
            o += k;
            goto stop;
        }
        in += 8;
        o += 8;
    }
    while (in < limit && *in != '"' && *in != '\\')
        *o++ = *in++;
stop:
    if (in >= limit || *in != '"') return NULL;
    *o = 0;
    a->used += (size_t)(o - out) + 1;
    a->live++;
    p->off = (size_t)(in - p->s) + 1;
    return (char *)out;
}

/* The string at p->off (its opening quote) into a new NUL-terminated allocation. */
static char *parse_string(struct jp *p)
{
    const unsigned char *start = p->s + p->off, *limit = p->s + p->len;
    if (*start != '"') return NULL;
    char *plain = string_plain(p, start + 1, limit);
    if (plain) return plain;
    const unsigned char *end = start + 1;
    size_t escapes = 0;
    while (end < limit && *end != '"') {
        if (*end == '\\') {
            if (end + 1 >= limit) return NULL; /* a backslash as the last byte */
            escapes++;
            end++;
        }
        end++;
    }
    if (end >= limit) return NULL; /* no closing quote */
    size_t raw = (size_t)(end - start - 1);
    unsigned char *out = block_alloc(p->a, raw + 1, 1);
    if (!out) return NULL;
    if (escapes == 0) {
        memcpy(out, start + 1, raw);
        out[raw] = 0;
        p->off = (size_t)(end - p->s) + 1;
        return (char *)out;
    }
    unsigned char *o = out;
    const unsigned char *in = start + 1;
    while (in < end) {
        if (*in != '\\') {
            *o++ = *in++;
            continue;
        }
        unsigned used = 2;
        switch (in[1]) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case '"':
        case '\\':
        case '/': *o++ = in[1]; break;
        case 'u':
            used = utf16_to_utf8(in, end, &o);
            if (used == 0) goto fail;
            break;
        default: goto fail;
        }
        in += used;
    }
    *o = 0;
    p->off = (size_t)(end - p->s) + 1;
    return (char *)out;
fail:
    arena_free(out);
    return NULL;
}

static const double pow10_exact[JSON_FAST_DIGITS_MAX + 1] = {
    1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
    1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
};

static bool parse_number(struct jp *p, cJSON *item)
{
    const unsigned char *s = p->s + p->off;
    size_t avail = p->len - p->off, n = 0;
    /* The run cJSON copies, and on the way whether it is -?D+(.D+)? with few digits. */
    bool fast = true, dot = false;
    uint64_t m = 0;
    unsigned digits = 0, frac = 0;
    for (; n < avail; n++) {
        unsigned char c = s[n];
        if (c >= '0' && c <= '9') {
            m = m * 10 + (uint64_t)(c - '0');
            digits++;
            frac += dot;
        } else if (c == '.') {
            if (dot || digits == 0) fast = false;
            dot = true;
        } else if (c == '-' || c == '+' || c == 'e' || c == 'E') {
            if (!(c == '-' && n == 0)) fast = false;
        } else {
            break;
        }
        if (digits > JSON_FAST_DIGITS_MAX) fast = false;
    }
    double v;
    size_t used;
    if (fast && digits > 0 && !(dot && frac == 0)) {
        v = (double)m / pow10_exact[frac];
        if (s[0] == '-') v = -v;
        used = n;
    } else {
        char stack[JSON_NUMBER_STACK_BYTES];
        char *buf = n < sizeof stack ? stack : malloc(n + 1);
        if (!buf) return false;
        memcpy(buf, s, n);
        buf[n] = 0;
        char point = localeconv()->decimal_point[0];
        if (point != '.')
            for (size_t i = 0; i < n; i++)
                if (buf[i] == '.') buf[i] = point;
        char *after;
        v = strtod(buf, &after);
        used = (size_t)(after - buf);
        if (buf != stack) free(buf);
        if (used == 0) return false;
    }
    item->valuedouble = v;
    if (v >= INT_MAX)
        item->valueint = INT_MAX;
    else if (v <= (double)INT_MIN)
        item->valueint = INT_MIN;
    else
        item->valueint = (int)v;
    item->type = cJSON_Number;
    p->off += used;
    return true;
}

/* The members of an array or object (cJSON's parse_array and parse_object in one). */
static bool parse_list(struct jp *p, cJSON *item, bool object)
{
    if (p->depth >= CJSON_NESTING_LIMIT) return false;
    p->depth++;
    cJSON *head = NULL, *cur = NULL;
    unsigned char close = object ? '}' : ']';
    p->off++;
    skip_ws(p);
    if (p->off < p->len && p->s[p->off] == close) goto success;
    if (p->off >= p->len) goto fail;
    p->off--; /* back to the character before the first member */
    do {
        cJSON *n = node_new(p);
        if (!n) goto fail;
        if (!head) {
            head = cur = n;
        } else {
            cur->next = n;
            n->prev = cur;
            cur = n;
        }
        if (object) {
            if (p->off + 1 >= p->len) goto fail; /* nothing after the comma */
            p->off++;
            skip_ws(p);
            if (p->off >= p->len || !(n->string = parse_string(p))) goto fail;
            skip_ws(p);
            if (p->off >= p->len || p->s[p->off] != ':') goto fail;
        }
        p->off++;
        skip_ws(p);
        if (!parse_value(p, n)) goto fail;
        skip_ws(p);
    } while (p->off < p->len && p->s[p->off] == ',');
    if (p->off >= p->len || p->s[p->off] != close) goto fail;
success:
    p->depth--;
    if (head) head->prev = cur;
    item->type = object ? cJSON_Object : cJSON_Array;
    item->child = head;
    p->off++;
    return true;
fail:
    cJSON_Delete(head); /* the hooks release block and malloc'd parts alike */
    return false;
}

static bool parse_value(struct jp *p, cJSON *item)
{
    if (p->off >= p->len) return false;
    const unsigned char *s = p->s + p->off;
    size_t avail = p->len - p->off;
    switch (s[0]) {
    case 'n':
        if (avail < 4 || memcmp(s, "null", 4) != 0) return false;
        item->type = cJSON_NULL;
        p->off += 4;
        return true;
    case 'f':
        if (avail < 5 || memcmp(s, "false", 5) != 0) return false;
        item->type = cJSON_False;
        p->off += 5;
        return true;
    case 't':
        if (avail < 4 || memcmp(s, "true", 4) != 0) return false;
        item->type = cJSON_True;
        item->valueint = 1;
        p->off += 4;
        return true;
    case '"':
        if (!(item->valuestring = parse_string(p))) return false;
        item->type = cJSON_String;
        return true;
    case '[': return parse_list(p, item, false);
    case '{': return parse_list(p, item, true);
    default:
        if (s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) return parse_number(p, item);
        return false;
    }
}

cJSON *json_arena_parse(const char *text, size_t len)
{
    struct json_arena *a = &g_arena;
    if (!a->base) {
        pthread_once(&g_once, key_make);
        a->base = malloc(JSON_ARENA_BYTES);
        if (a->base) pthread_setspecific(g_key, a->base);
    }
    if (!text || len == 0) return NULL;
    struct jp p = {(const unsigned char *)text, len, 0, 0, a};
    if (len >= 5 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) p.off = 3;
    size_t live0 = a->live;
    a->spilled = false;
    cJSON *root = node_new(&p);
    if (!root) return NULL;
    skip_ws(&p);
    if (!parse_value(&p, root)) {
        cJSON_Delete(root);
        return NULL;
    }
    if (!a->spilled) {
        /* A slot that still names this address belongs to a tree cJSON_Delete released. */
        for (unsigned i = 0; i < JSON_ARENA_TREES; i++)
            if (a->trees[i].root == root) a->trees[i].root = NULL;
        a->trees[a->next_tree] = (struct json_arena_tree){root, a->live - live0};
        a->next_tree = (a->next_tree + 1) % JSON_ARENA_TREES;
    }
    return root;
}

void json_arena_delete(cJSON *root)
{
    struct json_arena *a = &g_arena;
    if (!root) return;
    for (unsigned i = 0; i < JSON_ARENA_TREES; i++) {
        if (a->trees[i].root != root) continue;
        a->trees[i].root = NULL;
        a->live -= a->trees[i].allocs;
        if (a->live == 0) block_reset(a);
        return;
    }
    cJSON_Delete(root);
}

size_t json_arena_used(void)
{
    return g_arena.used;
}
