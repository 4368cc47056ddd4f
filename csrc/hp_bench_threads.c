/* hp_bench_threads.c - engines translating in parallel, without I/O (see hp_bench_threads.h).
 *
 * The start gate is a mutex and a condition variable: every thread first allocates and fills
 * its own buffers (first touch on its own CPU when pinned), then waits until all threads are
 * ready, so setup is not measured and the rounds overlap. Each thread reads CLOCK_MONOTONIC
 * itself when released and after its last round; the wall time is the latest end minus the
 * earliest start. The only shared state is the gate (under its mutex) and the read-only jobs.
 */
#define _GNU_SOURCE
#include "hp_bench_threads.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned ready; /* threads waiting at the gate */
    int go;         /* 1: run, -1: a thread could not be started, leave without work */
} gate;

typedef struct {
    const hp_bt_job *job;
    hp_bt_result *res;
    uint64_t rounds;
    gate *g;
} arg;

static double clock_s(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wait at the gate; returns 1 to run, 0 to leave. */
static int wait_gate(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->ready++;
    pthread_cond_broadcast(&g->cv);
    while (g->go == 0)
        pthread_cond_wait(&g->cv, &g->mu);
    int go = g->go;
    pthread_mutex_unlock(&g->mu);
    return go == 1;
}

static void *run(void *p)
{
    arg *a = p;
    const hp_bt_job *j = a->job;
    hp_bt_result r;
    memset(&r, 0, sizeof r);
    uint8_t *tmpl[HP_BT_MAX_BATCHES] = {0}, *work[HP_BT_MAX_BATCHES] = {0};
    uint8_t *verd[HP_BT_MAX_BATCHES] = {0}, *reas[HP_BT_MAX_BATCHES] = {0};
    uint32_t *offs[HP_BT_MAX_BATCHES] = {0}, *lens[HP_BT_MAX_BATCHES] = {0};
    unsigned nb = j->n_batches, b;

    if (j->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(j->cpu, &set);
        int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        r.pinned = rc == 0 ? 1 : -rc;
    }
    /* this thread's own copies, allocated and touched here */
    for (b = 0; b < nb; b++) {
        const hp_bt_batch *bb = &j->batch[b];
        size_t n = bb->n ? bb->n : 1, sz = bb->size ? bb->size : 1;
        tmpl[b] = malloc(sz);
        work[b] = malloc(sz);
        verd[b] = malloc(n);
        reas[b] = malloc(n);
        offs[b] = malloc(n * sizeof(uint32_t));
        lens[b] = malloc(n * sizeof(uint32_t));
        if (!tmpl[b] || !work[b] || !verd[b] || !reas[b] || !offs[b] || !lens[b]) {
            r.error = ENOMEM;
            nb = b + 1;
            break;
        }
        memcpy(tmpl[b], bb->tmpl, bb->size);
        memcpy(offs[b], bb->offsets, bb->n * sizeof(uint32_t));
        memcpy(lens[b], bb->lengths, bb->n * sizeof(uint32_t));
    }

    int go = wait_gate(a->g);
    r.start = clock_s(CLOCK_MONOTONIC);
    double cpu0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
    if (go && !r.error) {
        uint64_t passed = 0, total = 0;
        for (uint64_t k = 0; k < a->rounds; k++) {
            for (b = 0; b < nb; b++) {
                const hp_bt_batch *bb = &j->batch[b];
                memcpy(work[b], tmpl[b], bb->size);
                passed += hp_translate_batch(j->e, bb->dir, work[b], offs[b], lens[b], NULL,
                                             bb->n, j->now, verd[b], reas[b]);
                total += bb->n;
            }
        }
        r.passed = passed;
        r.dropped = total - passed;
    }
    r.cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    r.end = clock_s(CLOCK_MONOTONIC);
    if (go && !r.error && a->rounds) {
        for (b = 0; b < nb; b++) {
            const hp_bt_batch *bb = &j->batch[b];
            if (bb->out)
                memcpy(bb->out, work[b], bb->size);
            if (bb->verdicts)
                memcpy(bb->verdicts, verd[b], bb->n);
            if (bb->reasons)
                memcpy(bb->reasons, reas[b], bb->n);
        }
    }
    for (b = 0; b < nb; b++) {
        free(tmpl[b]);
        free(work[b]);
        free(verd[b]);
        free(reas[b]);
        free(offs[b]);
        free(lens[b]);
    }
    *a->res = r; /* one write to its own line */
    return NULL;
}

int hp_bench_threads(const hp_bt_job *jobs, unsigned t, uint64_t rounds, hp_bt_result *res,
                     double *wall)
{
    if (t == 0 || t > HP_BT_MAX_THREADS)
        return EINVAL;
    for (unsigned i = 0; i < t; i++) {
        if (jobs[i].n_batches > HP_BT_MAX_BATCHES || !jobs[i].e)
            return EINVAL;
        for (unsigned k = 0; k < i; k++)
            if (jobs[k].e == jobs[i].e)
                return EINVAL; /* one engine, one thread */
    }
    pthread_t *th = calloc(t, sizeof *th);
    arg *args = calloc(t, sizeof *args);
    gate g = {.ready = 0, .go = 0};
    int err = 0;
    unsigned started = 0;
    if (!th || !args) {
        free(th);
        free(args);
        return ENOMEM;
    }
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    for (unsigned i = 0; i < t; i++) {
        args[i] = (arg){.job = &jobs[i], .res = &res[i], .rounds = rounds, .g = &g};
        err = pthread_create(&th[i], NULL, run, &args[i]);
        if (err)
            break;
        started++;
    }
    pthread_mutex_lock(&g.mu);
    while (!err && g.ready < started)
        pthread_cond_wait(&g.cv, &g.mu);
    g.go = err ? -1 : 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    for (unsigned i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    free(th);
    free(args);
    if (err)
        return err;
    double s = res[0].start, e = res[0].end;
    for (unsigned i = 1; i < t; i++) {
        if (res[i].start < s)
            s = res[i].start;
        if (res[i].end > e)
            e = res[i].end;
    }
    *wall = e - s;
    return 0;
}
