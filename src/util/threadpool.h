/* util/threadpool.h - a fixed pool of worker threads running one parallel
 * loop at a time.
 *
 * dr_pool_run(pool, n_tasks, fn, arg) calls fn(arg, task, thread) for every
 * task in [0, n_tasks), spread over the workers and the calling thread, and
 * returns when all have finished. Tasks are handed out in order from a shared
 * counter, so uneven tasks balance themselves. `thread` (0 .. size-1) names
 * the thread running the task: use it to index per-thread scratch.
 */
#ifndef DR_UTIL_THREADPOOL_H
#define DR_UTIL_THREADPOOL_H

#include "deltarun.h"

typedef struct dr_pool dr_pool;

typedef void (*dr_pool_fn)(void *arg, int task, int thread);

/* A pool of n_threads threads in all (the caller counts as one, so
 * n_threads - 1 workers are started). n_threads < 1 is taken as 1. Fails
 * (DR_ERR_NOMEM / DR_ERR_IO) if threads can't be created. */
dr_status dr_pool_new(int n_threads, dr_pool **out);

/* Stop and join the workers. Accepts NULL. Can't fail. */
void dr_pool_free(dr_pool *p);

/* Threads in the pool (>= 1; 1 for NULL). */
int dr_pool_size(const dr_pool *p);

/* Run fn over n_tasks tasks and wait. Not reentrant: fn must not call
 * dr_pool_run on the same pool (it runs inline on the caller if it does).
 * A NULL pool runs everything on the caller. Can't fail. */
void dr_pool_run(dr_pool *p, int n_tasks, dr_pool_fn fn, void *arg);

#endif
