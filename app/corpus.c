/* The calibration and evaluation corpora: fixed lists of files every Debian 12
 * machine with build-essential holds (see corpus.h for which and why). */
#include "corpus.h"

#include "kvtc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LICENSES "/usr/share/common-licenses/"
#define INCLUDE "/usr/include/"

/* Prose and code alternate so that any prefix mixes both. */
static const corpus_doc calibration_docs[] = {
    {LICENSES "Apache-2.0", "Apache-2.0", CORPUS_PROSE},
    {INCLUDE "stdio.h", "stdio.h", CORPUS_CODE},
    {NULL, "numbers (generated)", CORPUS_PROSE},
    {INCLUDE "elf.h", "elf.h", CORPUS_CODE},
    {LICENSES "GPL-2", "GPL-2", CORPUS_PROSE},
    {INCLUDE "stdlib.h", "stdlib.h", CORPUS_CODE},
    {LICENSES "MPL-1.1", "MPL-1.1", CORPUS_PROSE},
    {INCLUDE "pthread.h", "pthread.h", CORPUS_CODE},
    {LICENSES "LGPL-2.1", "LGPL-2.1", CORPUS_PROSE},
    {INCLUDE "unistd.h", "unistd.h", CORPUS_CODE},
    {LICENSES "Artistic", "Artistic", CORPUS_PROSE},
    {INCLUDE "string.h", "string.h", CORPUS_CODE},
    {LICENSES "CC0-1.0", "CC0-1.0", CORPUS_PROSE},
    {INCLUDE "wchar.h", "wchar.h", CORPUS_CODE},
    {LICENSES "GPL-1", "GPL-1", CORPUS_PROSE},
    {INCLUDE "regex.h", "regex.h", CORPUS_CODE},
    {LICENSES "LGPL-2", "LGPL-2", CORPUS_PROSE},
    {INCLUDE "netdb.h", "netdb.h", CORPUS_CODE},
    {LICENSES "BSD", "BSD", CORPUS_PROSE},
    {INCLUDE "argp.h", "argp.h", CORPUS_CODE},
    {INCLUDE "signal.h", "signal.h", CORPUS_CODE},
    {INCLUDE "time.h", "time.h", CORPUS_CODE},
    {INCLUDE "dirent.h", "dirent.h", CORPUS_CODE},
    {INCLUDE "fcntl.h", "fcntl.h", CORPUS_CODE},
};

static const corpus_doc evaluation_docs[] = {
    {LICENSES "GPL-3", "GPL-3", CORPUS_PROSE},
    {INCLUDE "linux/perf_event.h", "linux/perf_event.h", CORPUS_CODE},
    {LICENSES "GFDL-1.3", "GFDL-1.3", CORPUS_PROSE},
    {INCLUDE "linux/io_uring.h", "linux/io_uring.h", CORPUS_CODE},
    {LICENSES "MPL-2.0", "MPL-2.0", CORPUS_PROSE},
    {INCLUDE "linux/fuse.h", "linux/fuse.h", CORPUS_CODE},
    {LICENSES "LGPL-3", "LGPL-3", CORPUS_PROSE},
    {INCLUDE "linux/input.h", "linux/input.h", CORPUS_CODE},
    {INCLUDE "linux/fs.h", "linux/fs.h", CORPUS_CODE},
    {INCLUDE "linux/ethtool.h", "linux/ethtool.h", CORPUS_CODE},
    {INCLUDE "linux/kvm.h", "linux/kvm.h", CORPUS_CODE},
    {INCLUDE "linux/videodev2.h", "linux/videodev2.h", CORPUS_CODE},
    {INCLUDE "linux/bpf.h", "linux/bpf.h", CORPUS_CODE},
};

_Static_assert(sizeof calibration_docs / sizeof calibration_docs[0] <= CORPUS_MAX_DOCS,
               "calibration list too long");
_Static_assert(sizeof evaluation_docs / sizeof evaluation_docs[0] <= CORPUS_MAX_DOCS,
               "evaluation list too long");

const char *corpus_split_name(corpus_split split)
{
    return split == CORPUS_CALIBRATION ? "calibration" : "evaluation";
}

const char *corpus_genre_name(corpus_genre genre)
{
    return genre == CORPUS_PROSE ? "prose" : "code";
}

static bool readable_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, R_OK) == 0;
}

/* A generated document is always present; a file, when it can be read. */
static bool doc_present(const corpus_doc *doc)
{
    return !doc->path || readable_file(doc->path);
}

size_t corpus_documents(corpus_split split, corpus_doc *docs, size_t cap)
{
    const corpus_doc *list = split == CORPUS_CALIBRATION ? calibration_docs : evaluation_docs;
    size_t n_list = split == CORPUS_CALIBRATION
                        ? sizeof calibration_docs / sizeof calibration_docs[0]
                        : sizeof evaluation_docs / sizeof evaluation_docs[0];
    size_t present = 0;
    for (size_t i = 0; i < n_list; i++) {
        if (!doc_present(&list[i]))
            continue;
        if (docs && present < cap)
            docs[present] = list[i];
        present++;
    }
    return present;
}

kvtc_status corpus_read(const char *path, size_t max_bytes, char **text, size_t *len,
                        kvtc_error *err)
{
    *text = NULL;
    *len = 0;
    if (max_bytes > CORPUS_MAX_DOC_BYTES)
        max_bytes = CORPUS_MAX_DOC_BYTES;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kvtc_fail(err, KVTC_E_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = kvtc_malloc(max_bytes + 1);
    if (!buf) {
        close(fd);
        return kvtc_fail(err, KVTC_E_NOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < max_bytes) {
        ssize_t n = read(fd, buf + got, max_bytes - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            kvtc_free(buf);
            return kvtc_fail(err, KVTC_E_IO, "%s: read failed: %s", path, strerror(e));
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    /* One more byte tells whether the file goes on past the limit. */
    char extra;
    bool truncated = got == max_bytes && read(fd, &extra, 1) == 1;
    close(fd);
    if (truncated) {
        size_t cut = got;
        while (cut > 0 && buf[cut - 1] != '\n')
            cut--;
        if (cut > 0)
            got = cut;
    }
    for (size_t i = 0; i < got; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    buf[got] = '\0';
    *text = buf;
    *len = got;
    return KVTC_OK;
}

/* ---- the generated document ------------------------------------------------------ */

static uint64_t next_random(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A number in [lo, hi]. */
static unsigned pick(uint64_t *s, unsigned lo, unsigned hi)
{
    return lo + (unsigned)(next_random(s) % (hi - lo + 1u));
}

/* A number of exactly k digits (1..9). */
static unsigned digits(uint64_t *s, unsigned k)
{
    unsigned lo = 1;
    for (unsigned i = 1; i < k; i++)
        lo *= 10;
    return pick(s, k == 1 ? 0 : lo, lo * 10 - 1);
}

/* One sentence of everyday prose carrying numbers: dates, amounts, codes,
 * times, versions, counts. */
static int number_sentence(uint64_t *s, char *out, size_t cap)
{
    static const char *const people[] = {"Maria", "Tomas", "Priya", "Kenji", "Olga", "Samuel",
                                         "Lucia", "Ahmed", "Nora", "Viktor", "Amara", "Pedro",
                                         "Yuki", "Hassan", "Ingrid", "Leon"};
    static const char *const things[] = {"invoice", "order",  "ticket", "account",
                                         "parcel",  "claim",  "permit", "batch",
                                         "room",    "flight", "case",   "policy"};
    static const char *const places[] = {"Lisbon", "Oslo",  "Denver", "Nairobi", "Osaka",
                                         "Krakow", "Lima",  "Quebec", "Perth",   "Tunis"};
#define ONE_OF(list) list[next_random(s) % (sizeof list / sizeof list[0])]
    switch (next_random(s) % 7) {
    case 0:
        return snprintf(out, cap, "%s paid %s %u on %u-%02u-%02u, a total of %u.%02u euros.",
                        ONE_OF(people), ONE_OF(things), digits(s, 5), pick(s, 1990, 2024),
                        pick(s, 1, 12), pick(s, 1, 28), digits(s, 3), pick(s, 0, 99));
    case 1:
        return snprintf(out, cap, "The %s number for %s is %u, and the backup code is %u.",
                        ONE_OF(things), ONE_OF(people), digits(s, pick(s, 4, 6)), digits(s, 4));
    case 2:
        return snprintf(out, cap, "In %u, %s had %u inhabitants; by %u the count was %u.",
                        pick(s, 1900, 2020), ONE_OF(places), digits(s, 6), pick(s, 2021, 2024),
                        digits(s, 6));
    case 3:
        return snprintf(out, cap, "Call %s at %u-%u-%u before %u:%02u about %s %u.",
                        ONE_OF(people), digits(s, 3), digits(s, 3), digits(s, 4), pick(s, 1, 12),
                        pick(s, 0, 59), ONE_OF(things), digits(s, 5));
    case 4:
        return snprintf(out, cap, "Version %u.%u.%u fixed bug #%u and raised the limit from %u "
                                  "to %u.",
                        pick(s, 0, 9), pick(s, 0, 30), pick(s, 0, 99), digits(s, 5), digits(s, 3),
                        digits(s, 4));
    case 5:
        return snprintf(out, cap, "Train %u leaves %s at %02u:%02u from platform %u; seat %u in "
                                  "car %u.",
                        digits(s, 4), ONE_OF(places), pick(s, 0, 23), pick(s, 0, 59),
                        pick(s, 1, 20), digits(s, 2), pick(s, 1, 12));
    default:
        return snprintf(out, cap, "Table %u shows %u.%u%% growth over %u years, or %u new %ss.",
                        pick(s, 1, 40), digits(s, 2), digits(s, 1), pick(s, 2, 15), digits(s, 4),
                        ONE_OF(things));
    }
#undef ONE_OF
}

/* 3-7 number sentences joined by spaces into out; returns the length. */
static size_t number_paragraph(uint64_t *s, char *out, size_t cap)
{
    unsigned count = pick(s, 3, 7);
    size_t n = 0;
    for (unsigned i = 0; i < count && n + 1 < cap; i++) {
        if (i)
            out[n++] = ' ';
        int k = number_sentence(s, out + n, cap - n);
        n += k < 0 ? 0 : (size_t)k < cap - n ? (size_t)k : cap - n - 1;
    }
    return n;
}

/* Whole paragraphs, each followed by a blank line, the same on every machine. */
static kvtc_status generate_numbers(size_t max_bytes, char **text, size_t *len, kvtc_error *err)
{
    char *buf = kvtc_malloc(max_bytes + 1);
    if (!buf)
        return kvtc_fail(err, KVTC_E_NOMEM, "corpus: out of memory");
    uint64_t s = 0x6e756d62657273ull; /* fixed seed: the document never changes */
    size_t n = 0;
    char para[2048];
    for (;;) {
        size_t k = number_paragraph(&s, para, sizeof para);
        if (n + k + 2 > max_bytes)
            break;
        memcpy(buf + n, para, k);
        n += k;
        buf[n++] = '\n';
        buf[n++] = '\n';
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return KVTC_OK;
}

kvtc_status corpus_doc_text(const corpus_doc *doc, char **text, size_t *len, kvtc_error *err)
{
    if (!doc->path)
        return generate_numbers(CORPUS_MAX_DOC_BYTES, text, len, err);
    return corpus_read(doc->path, CORPUS_MAX_DOC_BYTES, text, len, err);
}

/* Tokens of one whole document (its first CORPUS_MAX_DOC_BYTES). */
static kvtc_status tokenize_doc(const tokenizer *tok, const corpus_doc *doc, int32_t **ids,
                                size_t *n, kvtc_error *err)
{
    char *text;
    size_t len;
    kvtc_status st = corpus_doc_text(doc, &text, &len, err);
    if (st != KVTC_OK)
        return st;
    st = tokenizer_encode(tok, text, len, false, ids, n, err);
    kvtc_free(text);
    if (st != KVTC_OK)
        kvtc_fail_prefix(err, doc->path ? doc->path : doc->name);
    return st;
}

void corpus_chunks_free(corpus_chunks *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_chunks; i++)
        kvtc_free(c->chunk[i].ids);
    kvtc_free(c->chunk);
    memset(c, 0, sizeof *c);
}

kvtc_status corpus_make_chunks(const tokenizer *tok, corpus_split split, uint32_t chunk_tokens,
                               size_t max_chunks, bool add_bos, corpus_chunks *out,
                               kvtc_error *err)
{
    memset(out, 0, sizeof *out);
    int32_t bos = add_bos ? tokenizer_bos(tok) : -1;
    uint32_t body = chunk_tokens - (bos >= 0 ? 1u : 0u); /* document tokens per chunk */
    if (chunk_tokens == 0 || body == 0)
        return kvtc_fail(err, KVTC_E_INVALID, "corpus: chunk of %u tokens is too short",
                         chunk_tokens);
    out->n_docs = corpus_documents(split, out->docs, CORPUS_MAX_DOCS);

    int32_t *doc_ids[CORPUS_MAX_DOCS] = {0};
    size_t doc_chunks[CORPUS_MAX_DOCS] = {0};
    size_t total = 0;
    kvtc_status st = KVTC_OK;
    for (size_t d = 0; d < out->n_docs && st == KVTC_OK; d++) {
        size_t n;
        st = tokenize_doc(tok, &out->docs[d], &doc_ids[d], &n, err);
        if (st == KVTC_OK) {
            doc_chunks[d] = n / body;
            total += doc_chunks[d];
        }
    }
    if (st == KVTC_OK && total == 0)
        st = kvtc_fail(err, KVTC_E_IO,
                       "corpus: the %s documents (/usr/share/common-licenses, /usr/include) "
                       "hold no chunk of %u tokens",
                       corpus_split_name(split), chunk_tokens);
    if (st == KVTC_OK && max_chunks != 0 && total > max_chunks)
        total = max_chunks;
    if (st == KVTC_OK && !(out->chunk = kvtc_calloc(total, sizeof *out->chunk)))
        st = kvtc_fail(err, KVTC_E_NOMEM, "corpus: out of memory for %zu chunks", total);
    for (size_t round = 0; st == KVTC_OK && out->n_chunks < total; round++) {
        for (size_t d = 0; d < out->n_docs && out->n_chunks < total; d++) {
            if (round >= doc_chunks[d])
                continue;
            corpus_chunk *c = &out->chunk[out->n_chunks];
            if (!(c->ids = kvtc_malloc_array(chunk_tokens, sizeof *c->ids))) {
                st = kvtc_fail(err, KVTC_E_NOMEM, "corpus: out of memory for a chunk");
                break;
            }
            uint32_t k = 0;
            if (bos >= 0)
                c->ids[k++] = bos;
            memcpy(c->ids + k, doc_ids[d] + round * body, body * sizeof *c->ids);
            c->n = chunk_tokens;
            c->doc = out->docs[d];
            c->offset = (uint32_t)(round * body);
            out->n_chunks++;
            out->n_tokens += chunk_tokens;
        }
    }
    for (size_t d = 0; d < out->n_docs; d++)
        kvtc_free(doc_ids[d]);
    if (st != KVTC_OK)
        corpus_chunks_free(out);
    return st;
}

kvtc_status corpus_context(const tokenizer *tok, corpus_split split, size_t n_tokens,
                           bool add_bos, int32_t **ids, kvtc_error *err)
{
    *ids = NULL;
    corpus_doc docs[CORPUS_MAX_DOCS];
    size_t n_docs = corpus_documents(split, docs, CORPUS_MAX_DOCS);
    int32_t *out = kvtc_malloc_array(n_tokens ? n_tokens : 1, sizeof *out);
    if (!out)
        return kvtc_fail(err, KVTC_E_NOMEM, "corpus: out of memory for %zu tokens", n_tokens);
    size_t have = 0;
    int32_t bos = add_bos ? tokenizer_bos(tok) : -1;
    if (bos >= 0 && have < n_tokens)
        out[have++] = bos;

    int32_t *sep = NULL;
    size_t n_sep = 0;
    kvtc_status st = tokenizer_encode(tok, "\n\n", 2, false, &sep, &n_sep, err);
    for (size_t d = 0; st == KVTC_OK && d < n_docs && have < n_tokens; d++) {
        int32_t *doc;
        size_t n;
        st = tokenize_doc(tok, &docs[d], &doc, &n, err);
        if (st != KVTC_OK)
            break;
        if (d > 0)
            for (size_t i = 0; i < n_sep && have < n_tokens; i++)
                out[have++] = sep[i];
        size_t take = n < n_tokens - have ? n : n_tokens - have;
        memcpy(out + have, doc, take * sizeof *out);
        have += take;
        kvtc_free(doc);
    }
    kvtc_free(sep);
    if (st == KVTC_OK && have < n_tokens)
        st = kvtc_fail(err, KVTC_E_IO,
                       "corpus: the %s documents hold only %zu tokens, %zu were asked for",
                       corpus_split_name(split), have, n_tokens);
    if (st != KVTC_OK) {
        kvtc_free(out);
        return st;
    }
    *ids = out;
    return KVTC_OK;
}
