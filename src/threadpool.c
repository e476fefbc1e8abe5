/* A minimal fork-join parallel-for over independent items (chunks, blocks).
 * Items are claimed from an atomic counter; results never depend on which
 * thread ran an item, so output is identical for every thread count. */
#include "kvtc_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

typedef struct job {
    uint32_t n;
    kvtc_task_fn fn;
    void *user;
    atomic_uint next;
    atomic_uint first_failed; /* lowest failing item index, n if none */
    pthread_mutex_t lock;
    kvtc_error first_err;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    for (;;) {
        uint32_t i = atomic_fetch_add(&j->next, 1u);
        if (i >= j->n || i > atomic_load(&j->first_failed))
            break;
        kvtc_error e;
        kvtc_error_clear(&e);
        kvtc_status st = j->fn(j->user, i, &e);
        if (st != KVTC_OK) {
            if (e.status == KVTC_OK)
                kvtc_fail(&e, st, "%s", kvtc_status_string(st));
            pthread_mutex_lock(&j->lock);
            if (i < atomic_load(&j->first_failed)) {
                atomic_store(&j->first_failed, i);
                j->first_err = e;
            }
            pthread_mutex_unlock(&j->lock);
        }
    }
    return NULL;
}

kvtc_status kvtc_parallel_for(uint32_t n, uint32_t n_threads, kvtc_task_fn fn, void *user,
                              kvtc_error *err)
{
    job j;
    memset(&j, 0, sizeof j);
    j.n = n;
    j.fn = fn;
    j.user = user;
    atomic_init(&j.next, 0u);
    atomic_init(&j.first_failed, n);
    if (pthread_mutex_init(&j.lock, NULL) != 0)
        return kvtc_fail(err, KVTC_E_NOMEM, "cannot create a mutex");
    if (n_threads == 0)
        n_threads = 1;
    if (n_threads > n)
        n_threads = n ? n : 1;
    if (n_threads > KVTC_MAX_THREADS)
        n_threads = KVTC_MAX_THREADS;
    pthread_t threads[KVTC_MAX_THREADS];
    uint32_t started = 0;
    for (uint32_t t = 1; t < n_threads; t++) {
        if (pthread_create(&threads[started], NULL, worker, &j) != 0)
            break; /* fewer threads is still correct */
        started++;
    }
    worker(&j);
    for (uint32_t t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    pthread_mutex_destroy(&j.lock);
    if (atomic_load(&j.first_failed) < n) {
        if (err)
            *err = j.first_err;
        return j.first_err.status;
    }
    return KVTC_OK;
}
