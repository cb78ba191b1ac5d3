#include "app/ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct bucket {
    uint8_t ip[16];
    int used;
    double tokens;
    int64_t last_ms;
};

struct shard {
    pthread_mutex_t mu;
    struct bucket slots[RATELIMIT_SLOTS_PER_SHARD];
};

struct ratelimit {
    int64_t rate_per_s;
    int64_t burst;
    struct shard shards[RATELIMIT_SHARDS];
};

struct ratelimit *ratelimit_new(int64_t rate_per_s, int64_t burst)
{
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl) return NULL;
    rl->rate_per_s = rate_per_s;
    rl->burst = burst < 1 ? 1 : burst;
    for (int i = 0; i < RATELIMIT_SHARDS; i++) pthread_mutex_init(&rl->shards[i].mu, NULL);
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl) return;
    for (int i = 0; i < RATELIMIT_SHARDS; i++) pthread_mutex_destroy(&rl->shards[i].mu);
    free(rl);
}

static uint64_t ip_hash(const uint8_t ip[16])
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: not adversarial-safe, but slots are bounded */
    for (int i = 0; i < 16; i++) h = (h ^ ip[i]) * 1099511628211ULL;
    return h;
}

int64_t ratelimit_take(struct ratelimit *rl, const uint8_t ip[16], int64_t n, int64_t now_ms)
{
    if (rl->rate_per_s <= 0) return 0;
    if (n > rl->burst) return -1;
    uint64_t h = ip_hash(ip);
    struct shard *sh = &rl->shards[h % RATELIMIT_SHARDS];
    /* Open addressing over a short probe window; the stalest slot in the window is reused. */
    enum { PROBE = 8 };
    pthread_mutex_lock(&sh->mu);
    struct bucket *b = NULL, *victim = NULL;
    for (int i = 0; i < PROBE; i++) {
        struct bucket *s = &sh->slots[(h / RATELIMIT_SHARDS + (uint64_t)i) %
                                      RATELIMIT_SLOTS_PER_SHARD];
        if (s->used && memcmp(s->ip, ip, 16) == 0) {
            b = s;
            break;
        }
        if (!victim || !s->used || (victim->used && s->last_ms < victim->last_ms)) victim = s;
    }
    if (!b) {
        b = victim;
        memcpy(b->ip, ip, 16);
        b->used = 1;
        b->tokens = (double)rl->burst;
        b->last_ms = now_ms;
    }
    double elapsed_s = (double)(now_ms - b->last_ms) / 1000.0;
    if (elapsed_s > 0) {
        b->tokens += elapsed_s * (double)rl->rate_per_s;
        if (b->tokens > (double)rl->burst) b->tokens = (double)rl->burst;
        b->last_ms = now_ms;
    }
    int64_t wait_s = 0;
    if (b->tokens >= (double)n) {
        b->tokens -= (double)n;
    } else {
        double missing = (double)n - b->tokens;
        wait_s = (int64_t)(missing / (double)rl->rate_per_s) + 1;
    }
    pthread_mutex_unlock(&sh->mu);
    return wait_s;
}
