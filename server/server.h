/* kvtc serve: an HTTP server speaking the OpenAI chat API over the reference
 * engine, with a prompt cache of kvtc-compressed KV caches (prompt_cache.h).
 *
 * Requests are parsed on libmicrohttpd's connection threads, queued (at most
 * max_queue waiting, else 429) and run one at a time by the engine worker;
 * after a reply is complete the worker compresses the conversation's cache
 * into the prompt cache's RAM tier, then takes the next request, while a tier
 * writer thread copies the stream to the disk and Redis tiers. */
#ifndef KVTC_SERVER_SERVER_H
#define KVTC_SERVER_SERVER_H

#include "kvtc.h"
#include "model.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct serve_options {
    const model *m;          /* the model and its tokenizer, loaded by the caller */
    const tokenizer *tok;
    const char *model_id;    /* the name /v1/models lists and requests must use */
    const kvtc_calibration *cal; /* for the prompt cache */
    const char *calib_id;    /* names the calibration in the block hashes */
    kvtc_compress_options copt;
    const char *host;        /* address to listen on, e.g. "127.0.0.1" */
    uint16_t port;           /* 0: any free port */
    uint32_t max_queue;      /* requests waiting for the worker, beyond the running one */
    uint64_t max_body;       /* request body limit in bytes (413 above it) */
    uint64_t ram_budget;     /* bytes of compressed caches in RAM; 0: no RAM tier */
    const char *disk_dir;    /* the disk tier's folder; NULL: no disk tier */
    uint64_t disk_budget;    /* bytes of entry files there */
    const char *redis;       /* Redis Cluster seeds HOST:PORT[,...]; NULL: no Redis tier */
    uint32_t redis_ttl_s;    /* lifetime of the keys written there; 0: none */
    uint32_t max_tokens;     /* default and upper limit of max_tokens */
    uint32_t timeout_s;      /* idle connection timeout */
    uint32_t threads;        /* engine threads */
    const char *port_file;   /* when set, the bound port is written there (tests) */
} serve_options;

/* Runs until the process is signalled; returns only when it cannot start. */
kvtc_status serve_run(const serve_options *opt, kvtc_error *err);

#endif /* KVTC_SERVER_SERVER_H */
