/*
 * sched: CPU scheduling hints for the calling thread.
 *
 * Why. Linux 6.6+ schedules normal threads with EEVDF: a running thread keeps the CPU for its
 * slice (the base slice, 1.4 ms on this 2-core machine, checked at timer ticks, so runs of 3-4
 * ms are seen) even when a thread that was waiting wakes up, unless the waking thread asks for
 * a SHORTER slice (6.12+: sched_setattr's sched_runtime on a SCHED_OTHER thread; PREEMPT_SHORT
 * then lets it preempt at once). On a small server the consumers (nice 10) and RocksDB's
 * background threads run such multi-millisecond stretches, and an HTTP worker or the log writer
 * that woke behind one waited that long: the tail of the acknowledgement latency (perf sched
 * timehist under 20,000 events/s: scheduling delays of 1-6 ms on the workers and the writer,
 * behind a consumer's 3.9 ms run).
 *
 * sched_latency_critical() gives the calling thread a slice of SCHED_LATENCY_SLICE_NS, so it
 * preempts longer-slice threads when it wakes and gives the CPU back sooner itself. It keeps
 * the thread's policy (SCHED_OTHER) and nice value; it needs no privilege. On kernels without
 * custom slices (before 6.12, e.g. Debian 12's 6.1) the call succeeds and changes nothing.
 *
 * Callers: the HTTP worker threads and the log's writer, syncer and completer threads, each
 * once for itself at start. Any thread may call it.
 */
#ifndef TALLY_SCHED_H
#define TALLY_SCHED_H

#include <stdint.h>

/* 100 µs: the kernel's minimum custom slice; the threads that use it run far shorter bursts. */
#define SCHED_LATENCY_SLICE_NS 100000u

/* 0, or a negative errno (the thread keeps its default slice; nothing else changes). */
int sched_latency_critical(void);

/* The calling thread's slice in ns as the kernel reports it (the base slice unless requested;
 * 0 on kernels before EEVDF), or a negative errno. */
int64_t sched_slice_ns(void);

#endif
