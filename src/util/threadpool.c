/* util/threadpool.c - pthread worker pool for the CPU backend's parallel loops.
 *
 * One job at a time: the caller publishes (fn, arg, n_tasks) under a new
 * generation number and works on tasks itself; workers take tasks from an
 * atomic counter. Workers spin briefly (the CPU's pause hint, a sched_yield
 * only every YIELD_EVERY polls) before sleeping on a condition variable,
 * because decode issues hundreds of short parallel loops per token and a
 * futex wake-up (or a yield syscall per poll batch) per loop would cost more
 * than the loop. After SPIN_ROUNDS polls an idle worker sleeps, so an idle
 * pool burns no CPU.
 */
#include "util/threadpool.h"

#include "util/status.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define SPIN_ROUNDS 20000 /* polls before sleeping: with the pause below, a few hundred us */
#define YIELD_EVERY 2048  /* polls between sched_yield calls (a syscall each; only
                             useful when the machine has more threads than cores) */

/* One poll's back-off: the CPU's spin-wait hint, no system call. */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void backoff(int i) {
    if ((i & (YIELD_EVERY - 1)) == YIELD_EVERY - 1)
        sched_yield();
    else
        cpu_relax();
}

typedef struct worker {
    struct dr_pool *pool;
    int id; /* 1 .. n-1; the caller is 0 */
    pthread_t th;
} worker;

struct dr_pool {
    int n;                   /* threads including the caller */
    worker *w;               /* [n - 1] */
    pthread_mutex_t mu;
    pthread_cond_t wake;     /* new job or shutdown */
    pthread_cond_t done_cv;  /* last worker finished */
    atomic_uint gen;         /* job generation, bumped per job */
    atomic_int next;         /* next task index */
    atomic_int active;       /* workers still inside the current job */
    atomic_bool busy;        /* a job is running (reentrancy guard) */
    bool stop;
    /* the current job */
    dr_pool_fn fn;
    void *arg;
    int n_tasks;
};

static void run_tasks(dr_pool *p, int thread) {
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks)
            return;
        p->fn(p->arg, t, thread);
    }
}

/* Wait for a generation other than `seen`; false on shutdown. */
static bool wait_job(dr_pool *p, unsigned seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&p->gen, memory_order_acquire) != seen)
            return true;
        backoff(i);
    }
    pthread_mutex_lock(&p->mu);
    while (!p->stop && atomic_load_explicit(&p->gen, memory_order_acquire) == seen)
        pthread_cond_wait(&p->wake, &p->mu);
    bool go = !p->stop;
    pthread_mutex_unlock(&p->mu);
    return go;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    dr_pool *p = w->pool;
    unsigned seen = 0;
    while (wait_job(p, seen)) {
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        run_tasks(p, w->id);
        if (atomic_fetch_sub_explicit(&p->active, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

dr_status dr_pool_new(int n_threads, dr_pool **out) {
    *out = NULL;
    dr_pool *p = calloc(1, sizeof *p);
    if (!p)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory creating the thread pool");
    p->n = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->w = calloc((size_t)p->n, sizeof *p->w);
    if (!p->w) {
        dr_pool_free(p);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory creating the thread pool");
    }
    int want = p->n;
    p->n = 1; /* counts started threads, so a failure frees exactly those */
    for (int i = 1; i < want; i++) {
        p->w[i - 1] = (worker){.pool = p, .id = i};
        if (pthread_create(&p->w[i - 1].th, NULL, worker_main, &p->w[i - 1]) != 0) {
            dr_pool_free(p);
            return DR_FAIL(DR_ERR_IO, "could not start worker thread %d of %d", i, want - 1);
        }
        p->n++;
    }
    *out = p;
    return DR_OK;
}

void dr_pool_free(dr_pool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->w[i - 1].th, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done_cv);
    free(p->w);
    free(p);
}

int dr_pool_size(const dr_pool *p) { return p ? p->n : 1; }

#ifdef DR_POOL_TIMELINE
/* A measurement build (CMake DR_CPU_TIMELINE=ON, docs/PERFORMANCE.md session
 * 16): with DR_CPU_TIMELINE=FILE in the environment every dr_pool_run call
 * is recorded (start, end, task count, the task function as an offset from
 * dr_pool_run) and FILE is written at exit for scripts/cpu_timeline.py.
 * Only outermost calls are kept (nested ones run inline inside a task),
 * so only the thread that calls the backend writes; the first TL_MAX. */
#include <stdio.h>
#include <time.h>

#define TL_MAX (1 << 20)

typedef struct {
    double t0, t1;
    long fn;
    int n_tasks;
} tl_rec;

static tl_rec *g_tl;
static int g_tl_n, g_tl_state; /* 0 unknown, 1 recording, -1 off */

static double tl_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void tl_write(void) {
    FILE *f = fopen(getenv("DR_CPU_TIMELINE"), "w");
    if (!f)
        return;
    fprintf(f, "# start_s end_s n_tasks fn_offset_from_dr_pool_run\n");
    for (int i = 0; i < g_tl_n; i++)
        fprintf(f, "%.9f %.9f %d %ld\n", g_tl[i].t0, g_tl[i].t1, g_tl[i].n_tasks, g_tl[i].fn);
    fclose(f);
}

static bool tl_on(void) {
    if (!g_tl_state) {
        g_tl_state = getenv("DR_CPU_TIMELINE") && (g_tl = malloc(TL_MAX * sizeof *g_tl)) ? 1 : -1;
        if (g_tl_state > 0)
            atexit(tl_write);
    }
    return g_tl_state > 0;
}
#endif

static void run_inline(int n_tasks, dr_pool_fn fn, void *arg) {
    for (int t = 0; t < n_tasks; t++)
        fn(arg, t, 0);
}

static void pool_run(dr_pool *p, int n_tasks, dr_pool_fn fn, void *arg);

void dr_pool_run(dr_pool *p, int n_tasks, dr_pool_fn fn, void *arg) {
#ifdef DR_POOL_TIMELINE
    if (tl_on() && g_tl_n < TL_MAX && !(p && atomic_load(&p->busy))) { /* outermost calls only */
        const double t0 = tl_now();
        pool_run(p, n_tasks, fn, arg);
        g_tl[g_tl_n++] = (tl_rec){t0, tl_now(), (long)((const char *)(void *)fn - (const char *)(void *)dr_pool_run),
                                  n_tasks};
        return;
    }
#endif
    pool_run(p, n_tasks, fn, arg);
}

static void pool_run(dr_pool *p, int n_tasks, dr_pool_fn fn, void *arg) {
    if (n_tasks <= 0)
        return;
    if (!p || p->n == 1 || n_tasks == 1 || atomic_exchange(&p->busy, true)) {
        run_inline(n_tasks, fn, arg); /* nested call: the caller keeps thread id 0 */
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->active, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release); /* publishes the job fields */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    for (int i = 0; i < SPIN_ROUNDS && atomic_load_explicit(&p->active, memory_order_acquire) > 0; i++)
        backoff(i);
    if (atomic_load_explicit(&p->active, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load_explicit(&p->active, memory_order_acquire) > 0)
            pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    atomic_store(&p->busy, false);
}
