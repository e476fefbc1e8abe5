/* Real text that every Debian 12 machine with build-essential holds, split in
 * two disjoint sets: one to calibrate on, one to evaluate and benchmark on.
 *
 * Prose is the license texts of /usr/share/common-licenses (package
 * base-files, always installed); code is C headers from /usr/include (glibc's,
 * package libc6-dev, for calibration; the Linux UAPI headers, package
 * linux-libc-dev, for evaluation; both come with build-essential).
 *
 *   calibration  prose: Apache-2.0 Artistic BSD CC0-1.0 GPL-1 GPL-2 LGPL-2
 *                       LGPL-2.1 MPL-1.1, and "numbers" (generated)
 *                code:  stdio.h elf.h stdlib.h string.h unistd.h pthread.h
 *                       signal.h time.h wchar.h regex.h netdb.h argp.h dirent.h
 *                       fcntl.h
 *   evaluation   prose: GPL-3 GFDL-1.3 MPL-2.0 LGPL-3
 *                code:  linux/{perf_event,io_uring,fuse,input,fs,ethtool,kvm,
 *                       videodev2,bpf}.h
 *
 * Near-identical texts stay on one side (LGPL-2 and LGPL-2.1 both calibrate;
 * GFDL-1.2, a near copy of the evaluated GFDL-1.3, is used by neither), so
 * evaluation never sees text the calibration was fitted on. Prose and code
 * alternate in each list, so any prefix of a set mixes both. Files missing on
 * a machine are skipped; the order never depends on the file system.
 *
 * "numbers" is everyday prose dense with numbers (dates, amounts, codes,
 * times), generated from a fixed seed, so the same on every machine: the
 * license texts hold few numbers, and a basis fitted without them restored
 * the key/value rows of digits in a prompt with ~2.6x the mean relative
 * error (measured on SmolLM2-135M at ratio 16), and retrieval asks for
 * exactly such numbers. */
#ifndef KVTC_TOOLS_CORPUS_H
#define KVTC_TOOLS_CORPUS_H

#include "kvtc.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum corpus_split { CORPUS_CALIBRATION = 0, CORPUS_EVALUATION = 1 } corpus_split;
typedef enum corpus_genre { CORPUS_PROSE = 0, CORPUS_CODE = 1 } corpus_genre;

typedef struct corpus_doc {
    const char *path; /* absolute; a static string; NULL for a generated document */
    const char *name; /* short label, e.g. "GPL-3" or "linux/bpf.h" */
    corpus_genre genre;
} corpus_doc;

/* Most documents a split lists (present or not). */
#define CORPUS_MAX_DOCS 32
/* Longest prefix of a document that is ever read. */
#define CORPUS_MAX_DOC_BYTES ((size_t)256 << 10)

const char *corpus_split_name(corpus_split split); /* "calibration", "evaluation" */
const char *corpus_genre_name(corpus_genre genre); /* "prose", "code" */

/* The split's documents present on this machine (readable regular files), in
 * the fixed order above; writes at most cap of them and returns how many are
 * present. */
size_t corpus_documents(corpus_split split, corpus_doc *docs, size_t cap);

/* Reads the first max_bytes (at most CORPUS_MAX_DOC_BYTES) of a document as
 * text: NUL bytes become spaces, a cut falls after the last newline before
 * the limit. *text is NUL-terminated and freed with kvtc_free. */
kvtc_status corpus_read(const char *path, size_t max_bytes, char **text, size_t *len,
                        kvtc_error *err);

/* The text of a document (read, or generated), at most CORPUS_MAX_DOC_BYTES,
 * as corpus_read gives it. */
kvtc_status corpus_doc_text(const corpus_doc *doc, char **text, size_t *len, kvtc_error *err);

/* One run of consecutive tokens from one document. */
typedef struct corpus_chunk {
    int32_t *ids; /* n tokens; owned by the chunk list */
    uint32_t n;
    corpus_doc doc;
    uint32_t offset; /* index of the chunk's first token in its document */
} corpus_chunk;

typedef struct corpus_chunks {
    corpus_chunk *chunk;
    size_t n_chunks;
    uint64_t n_tokens; /* sum of the chunks' n */
    corpus_doc docs[CORPUS_MAX_DOCS]; /* the documents the chunks were cut from */
    size_t n_docs;
} corpus_chunks;

/* Cuts the split's documents into chunks of exactly chunk_tokens tokens
 * (a document's remainder shorter than that is dropped), taken round-robin
 * over the documents (chunk 0 of every document, then chunk 1, ...) until
 * max_chunks (0 = no limit), so any number of chunks mixes prose and code.
 * With add_bos and a tokenizer that has a BOS token, each chunk starts with
 * it (counted in chunk_tokens). Fails with KVTC_E_IO when the split yields
 * no chunk at all. Free with corpus_chunks_free. */
kvtc_status corpus_make_chunks(const tokenizer *tok, corpus_split split, uint32_t chunk_tokens,
                               size_t max_chunks, bool add_bos, corpus_chunks *out,
                               kvtc_error *err);
void corpus_chunks_free(corpus_chunks *c);

/* The first n_tokens tokens of the split's documents read in order and joined
 * by a blank line, one long context of real text (with add_bos, BOS first).
 * Fails with KVTC_E_IO naming the shortfall when the split holds fewer
 * tokens. *ids is freed with kvtc_free. */
kvtc_status corpus_context(const tokenizer *tok, corpus_split split, size_t n_tokens,
                           bool add_bos, int32_t **ids, kvtc_error *err);

#endif /* KVTC_TOOLS_CORPUS_H */
