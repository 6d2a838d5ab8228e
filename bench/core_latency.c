/* Core-to-core latency of this machine, for labelling benchmark rounds (bench/run_bench.py).
 *
 * Two threads hand one cache line back and forth; the time per round trip is what a value
 * written by one core costs to read on the other. On the 2-vCPU development VM it switches
 * between ~90-150 ns and ~370-450 ns for tens of seconds at a time (the host places the two
 * vCPUs near or far apart), while single-core speed stays the same; the two-thread model
 * timings follow it (bench/README.md, "The machine's two modes").
 *
 * Built by run_bench.py with `cc -O2 -shared -fPIC -pthread`; no dependencies. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static _Atomic int flag __attribute__((aligned(64)));
static int rounds;

static void* partner(void* unused) {
    (void)unused;
    for (int r = 0; r < rounds; ++r) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) {
        }
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return 0;
}

/* nanoseconds per round trip (two cache-line transfers), median-free: one timed loop */
double polyget_core_latency_ns(int n) {
    if (n < 1) n = 1;
    rounds = n;
    atomic_store(&flag, 0);
    pthread_t t;
    if (pthread_create(&t, 0, partner, 0) != 0) return -1.0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < n; ++r) {
        atomic_store_explicit(&flag, 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 0) {
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(t, 0);
    return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / n;
}
