/* The failing allocator and its sweep (test_alloc.h). */
#include "test_alloc.h"

#include "testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic uint64_t g_count;   /* allocations since the last arm */
static _Atomic uint64_t g_fail_at; /* 1-based index of the first to fail; 0: none */
static _Atomic bool g_sticky;      /* every allocation after g_fail_at fails too */
static _Atomic bool g_paused;
static _Atomic int64_t g_live;     /* allocations not freed yet */

static void *failing_malloc(size_t n, void *user)
{
    (void)user;
    if (!g_paused) {
        uint64_t i = ++g_count, k = g_fail_at;
        if (k && (i == k || (g_sticky && i > k)))
            return NULL;
    }
    void *p = malloc(n);
    if (p)
        g_live++;
    return p;
}

static void counting_free(void *p, void *user)
{
    (void)user;
    if (p) {
        g_live--;
        free(p);
    }
}

void test_alloc_install(void)
{
    static const kvtc_allocator a = {failing_malloc, counting_free, NULL};
    test_alloc_arm(0, false);
    kvtc_set_allocator(&a);
}

void test_alloc_remove(void) { kvtc_set_allocator(NULL); }

void test_alloc_arm(uint64_t k, bool sticky)
{
    g_fail_at = 0;
    g_count = 0;
    g_sticky = sticky;
    g_fail_at = k;
}

uint64_t test_alloc_count(void) { return g_count; }

int64_t test_alloc_live(void) { return g_live; }

void test_alloc_pause(void) { g_paused = true; }

void test_alloc_resume(void) { g_paused = false; }

test_alloc_tally test_alloc_sweep(const char *name, test_alloc_step step, void *arg,
                                  unsigned flags)
{
    enum { MAX_POINTS = 1000000 };
    test_alloc_tally t = {0, 0, 0, 0};
    for (uint64_t k = 1;; k++) {
        kvtc_error err = {0};
        bool wrong = false;
        int64_t live_before = g_live;
        test_alloc_arm(k, flags & TEST_ALLOC_STICKY);
        kvtc_status st = step(arg, &err, &wrong);
        bool reached = g_count >= k;
        test_alloc_arm(0, false);
        if (g_live != live_before) {
            t.leaks++;
            CHECK_MSG(false, "%s, allocation %llu failing: %lld allocations leaked", name,
                      (unsigned long long)k, (long long)(g_live - live_before));
        }
        CHECK_MSG(!wrong, "%s, allocation %llu failing: wrong result", name,
                  (unsigned long long)k);
        if (!reached) {
            CHECK_MSG(st == KVTC_OK, "%s fails without an injected failure: %s", name,
                      err.message);
            break;
        }
        t.points++;
        if (st == KVTC_OK) {
            t.fallbacks++;
            CHECK_MSG(flags & TEST_ALLOC_FALLBACK,
                      "%s, allocation %llu failing: succeeded without that allocation", name,
                      (unsigned long long)k);
        } else {
            CHECK_MSG(err.status == st && err.message[0] && !strchr(err.message, '\n'),
                      "%s, allocation %llu failing: status %s without a proper message", name,
                      (unsigned long long)k, kvtc_status_string(st));
            if (st != KVTC_E_NOMEM) {
                t.other_status++;
                CHECK_MSG(flags & TEST_ALLOC_ANY_STATUS,
                          "%s, allocation %llu failing: %s (%s), want out of memory", name,
                          (unsigned long long)k, kvtc_status_string(st), err.message);
            }
        }
        if (!CHECK_MSG(k < MAX_POINTS, "%s never finishes", name))
            break;
    }
    printf("  %-26s %6llu points, %llu leaks, %llu succeeded anyway, %llu other errors\n", name,
           (unsigned long long)t.points, (unsigned long long)t.leaks,
           (unsigned long long)t.fallbacks, (unsigned long long)t.other_status);
    return t;
}
