/* hp_bench_threads.h - engines translating in parallel, without I/O: the engine-level scaling
 * benchmark of the data-path workers (benchmarks/engine_threads.py) and its ThreadSanitizer
 * check (tests/engine/test_threads.py, .ci/tsan).
 *
 * T threads, each with its OWN engine (an engine is used by one thread at a time), translate
 * their own copy of prepared packets for a fixed number of rounds. No lock and no shared write
 * on the way: every thread allocates its buffers itself and writes only its own engine, its
 * buffers and its own cache-line-sized result slot. Not part of the public API.
 */
#ifndef HP_BENCH_THREADS_H
#define HP_BENCH_THREADS_H

#include <stdint.h>

#include "hp_engine.h"

#define HP_BT_MAX_THREADS 256
#define HP_BT_MAX_BATCHES 4 /* batches per thread, translated one after the other each round */

/* One batch: n packets of one direction at offsets/lengths in a template of size bytes. Each
 * round copies the template into the thread's working buffer (translation is in place and
 * decrements the TTL, so the input must be fresh) and translates it. After the last round the
 * working buffer, verdicts and reasons are copied to out/verdicts/reasons (may be NULL). */
typedef struct {
    int dir;
    const uint8_t *tmpl;
    size_t size;
    const uint32_t *offsets, *lengths;
    uint32_t n;
    uint8_t *out, *verdicts, *reasons;
} hp_bt_batch;

typedef struct {
    hp_engine *e;
    double now;   /* the engine time of every round (the caller has advanced the engine to it) */
    int cpu;      /* the CPU to pin the thread to; -1: not pinned */
    unsigned n_batches;
    hp_bt_batch batch[HP_BT_MAX_BATCHES];
} hp_bt_job;

/* What one thread did: one cache line each, so no two threads write the same line. */
typedef struct {
    uint64_t passed;  /* packets translated (verdict other than DROP) */
    uint64_t dropped;
    double start, end; /* CLOCK_MONOTONIC seconds: released from the start gate, last round done */
    double cpu;        /* the thread's own CPU time over the rounds (CLOCK_THREAD_CPUTIME_ID):
                          without the time other processes took its CPU away */
    int32_t pinned;    /* 1: pinned to job.cpu, 0: not asked, -errno: pinning failed */
    int32_t error;     /* 0, or ENOMEM when its buffers could not be allocated (it did nothing) */
} __attribute__((aligned(64))) hp_bt_result;

_Static_assert(sizeof(hp_bt_result) == 64, "hp_bt_result must fill exactly one cache line");

/* Run jobs[0..t-1] on t new threads, all released together from a start gate, `rounds` rounds
 * each; fills res[0..t-1] and *wall (latest end - earliest start). Returns 0, or an errno when
 * a thread could not be started (then no thread translated anything). Call without the GIL. */
int hp_bench_threads(const hp_bt_job *jobs, unsigned t, uint64_t rounds, hp_bt_result *res,
                     double *wall);

#endif
