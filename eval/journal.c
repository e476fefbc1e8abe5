/* The evaluation journal (journal.h). Layout, little-endian: magic
 * "KVTCEVJ\0", u32 version, u32 key length, the key, u32 finished contexts,
 * u32 methods, the results (one field list below, for writing and reading
 * alike), u32 CRC-32 of everything before it. */
#include "journal.h"

#include "kvtc_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define JOURNAL_MAGIC "KVTCEVJ"
#define JOURNAL_VERSION 1u

void eval_journal_key(const eval_options *o, const eval_method *methods, uint32_t n_methods,
                      const char *inputs, char *buf, size_t cap)
{
    size_t used = (size_t)snprintf(
        buf, cap,
        "%s|tasks %d%d%d%d|nll %u %u %u|passkey %u %u %u|kv %u %u %u|code %u %u %u|keep %u %u|",
        inputs, o->nll, o->passkey, o->kv, o->code, o->n_contexts, o->context_tokens,
        o->continuation_tokens, o->n_haystacks, o->facts_per_haystack, o->haystack_tokens,
        o->kv_contexts, o->kv_tokens, o->kv_questions, o->code_contexts, o->code_tokens,
        o->code_questions, o->sinks, o->window);
    for (uint32_t i = 0; i < n_methods && used < cap; i++) {
        char label[64];
        eval_method_label(&methods[i], label, sizeof label);
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? "," : "", label);
    }
}

/* ---- one field list: written, or read back ---------------------------------------- */

typedef struct journal_io {
    kvtc_writer *w; /* writing when set, else reading from r */
    kvtc_reader *r;
} journal_io;

static void io_u32(journal_io *io, uint32_t *v)
{
    if (io->w)
        kvtc_put_u32(io->w, *v);
    else
        *v = kvtc_get_u32(io->r);
}

static void io_u64(journal_io *io, uint64_t *v)
{
    if (io->w)
        kvtc_put_u64(io->w, *v);
    else
        *v = kvtc_get_u64(io->r);
}

static void io_f64(journal_io *io, double *v)
{
    if (io->w)
        kvtc_put_f64(io->w, *v);
    else
        *v = kvtc_get_f64(io->r);
}

static void io_bool(journal_io *io, bool *v)
{
    uint32_t x = *v;
    io_u32(io, &x);
    *v = x != 0;
}

static void io_f64s(journal_io *io, double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        io_f64(io, &v[i]);
}

static void io_tally(journal_io *io, eval_tally *t)
{
    io_f64(io, &t->nll_sum);
    io_u64(io, &t->top1_agree);
    io_u64(io, &t->tokens);
    io_u32(io, &t->correct);
    io_u32(io, &t->cases);
    io_u32(io, &t->lost);
    io_u32(io, &t->gained);
}

/* Everything of res but the methods' identities (the key fixes those). */
static void io_results(journal_io *io, eval_results *res)
{
    io_tally(io, &res->exact);
    io_tally(io, &res->exact_genre[0]);
    io_tally(io, &res->exact_genre[1]);
    io_tally(io, &res->exact_kv);
    io_tally(io, &res->exact_code);
    io_u32(io, &res->contexts);
    io_u32(io, &res->haystacks);
    io_u32(io, &res->kv_contexts);
    io_u32(io, &res->code_contexts);
    io_bool(io, &res->exact_bit_identical);
    io_f64s(io, res->energy, 2);
    io_f64s(io, res->outside_basis, 2);
    io_f64s(io, res->fact_energy, 2);
    io_f64s(io, res->fact_outside_basis, 2);
    io_f64(io, &res->seconds);
    for (uint32_t i = 0; i < res->n_methods; i++) {
        eval_method_result *m = &res->methods[i];
        io_tally(io, &m->all);
        io_tally(io, &m->genre[0]);
        io_tally(io, &m->genre[1]);
        io_tally(io, &m->kv);
        io_tally(io, &m->code);
        io_u64(io, &m->fp16_bytes);
        io_u64(io, &m->stored_bytes);
        io_u32(io, &m->min_kept);
        io_f64s(io, m->sq_error, 2);
        io_f64s(io, m->fact_sq_error, 2);
        io_f64(io, &m->treat_seconds);
    }
}

kvtc_status eval_journal_save(const char *path, const char *key, const eval_results *res,
                              uint32_t contexts, kvtc_error *err)
{
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_put_bytes(&w, JOURNAL_MAGIC, sizeof JOURNAL_MAGIC);
    kvtc_put_u32(&w, JOURNAL_VERSION);
    uint32_t key_len = (uint32_t)strlen(key);
    kvtc_put_u32(&w, key_len);
    kvtc_put_bytes(&w, key, key_len);
    kvtc_put_u32(&w, contexts);
    kvtc_put_u32(&w, res->n_methods);
    journal_io io = {.w = &w};
    io_results(&io, (eval_results *)res); /* writing reads only */
    if (!w.failed)
        kvtc_put_u32(&w, kvtc_crc32(w.buf, w.len));
    kvtc_status st = w.failed ? kvtc_fail(err, KVTC_E_NOMEM, "out of memory")
                              : kvtc_write_file_atomic(path, w.buf, w.len, err);
    kvtc_writer_free(&w);
    return st;
}

kvtc_status eval_journal_load(const char *path, const char *key, eval_results *res,
                              uint32_t *contexts, bool *other_run, kvtc_error *err)
{
    *contexts = 0;
    *other_run = false;
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT)
        return KVTC_OK; /* a first run */
    const void *map;
    size_t len;
    kvtc_status st = kvtc_map_file(path, &map, &len, err);
    if (st != KVTC_OK)
        return st;
    /* the checksum first: a damaged journal is refused before any field is trusted */
    bool intact =
        len >= sizeof JOURNAL_MAGIC + 4 && !memcmp(map, JOURNAL_MAGIC, sizeof JOURNAL_MAGIC);
    if (intact) {
        kvtc_reader tail;
        kvtc_reader_init(&tail, (const unsigned char *)map + len - 4, 4);
        intact = kvtc_get_u32(&tail) == kvtc_crc32(map, len - 4);
    }
    kvtc_reader r;
    kvtc_reader_init(&r, map, len);
    kvtc_get_bytes(&r, sizeof JOURNAL_MAGIC);
    uint32_t version = kvtc_get_u32(&r), key_len = kvtc_get_u32(&r);
    const char *stored_key = kvtc_get_bytes(&r, key_len);
    eval_results got = *res;
    got.methods = kvtc_calloc(res->n_methods ? res->n_methods : 1, sizeof *got.methods);
    if (!got.methods) {
        kvtc_unmap_file(map, len);
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory");
    }
    if (!intact)
        st = kvtc_fail_path(err, KVTC_E_CHECKSUM, path,
                            "not an evaluation journal, or a damaged one (delete it to "
                            "start over)");
    else if (version != JOURNAL_VERSION)
        st = kvtc_fail_path(err, KVTC_E_VERSION, path,
                            "evaluation journal version %u; this kvtc reads version %u",
                            version, JOURNAL_VERSION);
    else if (!stored_key || key_len != strlen(key) || memcmp(stored_key, key, key_len) != 0)
        *other_run = true;
    else {
        uint32_t done = kvtc_get_u32(&r), n_methods = kvtc_get_u32(&r);
        journal_io io = {.r = &r};
        if (n_methods == res->n_methods)
            io_results(&io, &got);
        if (n_methods != res->n_methods || r.overrun || kvtc_reader_left(&r) != 4)
            st = kvtc_fail_path(err, KVTC_E_FORMAT, path,
                                "evaluation journal does not match its key");
        else {
            *contexts = done;
            for (uint32_t i = 0; i < res->n_methods; i++)
                got.methods[i].method = res->methods[i].method;
            eval_method_result *scratch = got.methods;
            memcpy(res->methods, scratch, res->n_methods * sizeof *res->methods);
            got.methods = res->methods;
            *res = got;
            got.methods = scratch; /* freed below */
        }
    }
    kvtc_free(got.methods);
    kvtc_unmap_file(map, len);
    return st;
}
