/* Allocation failure injection for the tests: one kvtc_set_allocator
 * allocator that counts the library's allocations and the blocks still live,
 * and fails the k-th allocation (or the k-th and every later one), and one
 * driver that runs a step with each of its allocations failing in turn.
 * OpenBLAS/LAPACK allocate on their own, not through the hook. */
#ifndef KVTC_TEST_ALLOC_H
#define KVTC_TEST_ALLOC_H

#include "kvtc.h"

#include <stdbool.h>
#include <stdint.h>

/* Routes the library's allocations through the counting allocator (nothing
 * fails until test_alloc_arm). Call it before any other kvtc function, as
 * kvtc_set_allocator requires; test_alloc_remove restores malloc/free. */
void test_alloc_install(void);
void test_alloc_remove(void);

/* Restarts the count: allocation k (1-based) from now on fails, and with
 * `sticky` every one after it too; k = 0 fails none. Thread-safe to count. */
void test_alloc_arm(uint64_t k, bool sticky);
/* Allocations since the last test_alloc_arm. */
uint64_t test_alloc_count(void);
/* Blocks allocated through the hook and not freed yet. */
int64_t test_alloc_live(void);

/* Stops failing (and counting) until test_alloc_resume, so that a check
 * inside a step is not part of the step. Not nested. */
void test_alloc_pause(void);
void test_alloc_resume(void);

/* One step of a sweep: returns the status of the call under test and sets
 * *wrong when it succeeded with a wrong result. It frees what it made. */
typedef kvtc_status (*test_alloc_step)(void *arg, kvtc_error *err, bool *wrong);

enum {
    TEST_ALLOC_STICKY = 1,     /* the failing allocation and every later one fail */
    TEST_ALLOC_ANY_STATUS = 2, /* a failure may report another status than KVTC_E_NOMEM */
    TEST_ALLOC_FALLBACK = 4,   /* a step may succeed although an allocation failed */
};

typedef struct test_alloc_tally {
    uint64_t points;       /* runs in which the failing allocation was reached */
    uint64_t leaks;        /* runs that did not free everything */
    uint64_t fallbacks;    /* runs that succeeded anyway */
    uint64_t other_status; /* failures that were not KVTC_E_NOMEM */
} test_alloc_tally;

/* Runs `step` with allocation k failing, k = 1, 2, ..., until a run ends
 * before reaching k; that run must succeed. Every run must free what it
 * allocated and not report a wrong result; a run that reached its failure
 * must fail with a one-line message whose status is the returned one
 * (KVTC_E_NOMEM unless TEST_ALLOC_ANY_STATUS), or, with TEST_ALLOC_FALLBACK
 * only, succeed. Each broken rule is a failed check naming `name`. Needs
 * test_alloc_install. Prints one line of counts. */
test_alloc_tally test_alloc_sweep(const char *name, test_alloc_step step, void *arg,
                                  unsigned flags);

#endif /* KVTC_TEST_ALLOC_H */
