/* sched: see sched.h. glibc 2.36 has no wrapper for sched_setattr/sched_getattr: raw syscalls
 * with the kernel's struct layout (SCHED_ATTR_SIZE_VER1, include/uapi/linux/sched/types.h). */
#include "core/sched.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

struct kernel_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime; /* SCHED_OTHER on 6.12+: the slice request */
    uint64_t sched_deadline;
    uint64_t sched_period;
    uint32_t sched_util_min;
    uint32_t sched_util_max;
};

int sched_latency_critical(void)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, (id_t)tid);
    if (nice_now == -1 && errno) return -errno;
    struct kernel_sched_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.sched_policy = SCHED_OTHER;
    a.sched_nice = nice_now; /* sched_setattr sets the nice value too: keep it */
    a.sched_runtime = SCHED_LATENCY_SLICE_NS;
    if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) return -errno;
    return 0;
}

int64_t sched_slice_ns(void)
{
    struct kernel_sched_attr a;
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, 0, &a, (unsigned)sizeof a, 0) != 0) return -errno;
    return (int64_t)a.sched_runtime;
}
