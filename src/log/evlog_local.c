/* evlog_local: the segmented log behind the evlog interface (evlog.h). */
#include <stdlib.h>

#include "log/evlog.h"
#include "tally/error.h"

struct local_reader {
    struct evlog_reader base; /* first: the evlog_reader pointer is this struct's */
    struct seglog_reader *r;
};

static int l_append(void *impl, const struct seglog_rec *recs, const uint32_t *partitions,
                    uint32_t n, seglog_done_fn done, void *arg)
{
    (void)partitions;
    return seglog_append(impl, recs, n, done, arg);
}

static int l_poisoned_err(void *impl) { return seglog_poisoned_err(impl); }
static uint64_t l_start(void *impl) { return seglog_start_offset(impl); }
static uint64_t l_committed(void *impl) { return seglog_committed_offset(impl); }
static int l_wait(void *impl, uint64_t offset, int timeout_ms)
{
    return seglog_wait(impl, offset, timeout_ms);
}

static const struct evlog_ops local_ops;

static int l_reader_open(void *impl, uint64_t from, struct evlog_reader **out)
{
    struct local_reader *lr = calloc(1, sizeof *lr);
    if (!lr) return TALLY_ENOMEM;
    int rc = seglog_reader_open(impl, from, &lr->r);
    if (rc) {
        free(lr);
        return rc;
    }
    lr->base.ops = &local_ops;
    *out = &lr->base;
    return TALLY_OK;
}

static int l_reader_next(struct evlog_reader *r, struct seglog_record *rec)
{
    return seglog_reader_next(((struct local_reader *)r)->r, rec);
}

static uint64_t l_reader_position(const struct evlog_reader *r)
{
    return seglog_reader_position(((const struct local_reader *)r)->r);
}

static void l_reader_close(struct evlog_reader *r)
{
    struct local_reader *lr = (struct local_reader *)r;
    seglog_reader_close(lr->r);
    free(lr);
}

static int l_register(void *impl, const char *name, uint64_t offset)
{
    return seglog_consumer_register(impl, name, offset);
}

static int l_advance(void *impl, int id, uint64_t offset)
{
    return seglog_consumer_advance(impl, id, offset);
}

static const struct evlog_ops local_ops = {
    .kind = "local",
    .append = l_append,
    .poisoned_err = l_poisoned_err,
    .start_offset = l_start,
    .committed_offset = l_committed,
    .wait = l_wait,
    .reader_open = l_reader_open,
    .reader_next = l_reader_next,
    .reader_position = l_reader_position,
    .reader_close = l_reader_close,
    .consumer_register = l_register,
    .consumer_advance = l_advance,
};

void evlog_local(struct seglog *log, struct evlog *out)
{
    out->ops = &local_ops;
    out->impl = log;
}
