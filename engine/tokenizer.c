/* Byte-level BPE as GPT-2 defined it: text is split into words by a fixed
 * pattern (SmolLM2 first isolates every digit; Qwen2 has a pattern of its
 * own), each word's bytes are mapped to printable characters, and merges are
 * applied lowest rank first. Special (control) tokens written in the text are
 * matched literally before that. */
#include "tokenizer.h"

#include "kvtc_internal.h"

#include <stdlib.h>
#include <string.h>

/* llama.cpp token types (tokenizer.ggml.token_type). */
enum { TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4 };

/* ---- Unicode classes of the GPT-2 pattern ------------------------------------- */

typedef enum char_class { CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER } char_class;

typedef struct cp_range {
    uint32_t lo, hi;
} cp_range;

/* \p{L} for the Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic, Devanagari,
 * Thai, Georgian, Hangul, kana and CJK blocks and letterlike symbols (checked
 * against Unicode 14 there). Combining marks are not letters (as in \p{L}), so
 * they split words the same way the reference does. */
static const cp_range letters[] = {
    {0x41, 0x5a},       {0x61, 0x7a},       {0xaa, 0xaa},       {0xb5, 0xb5},
    {0xba, 0xba},       {0xc0, 0xd6},       {0xd8, 0xf6},       {0xf8, 0x2c1},
    {0x2c6, 0x2d1},     {0x2e0, 0x2e4},     {0x2ec, 0x2ec},     {0x2ee, 0x2ee},
    {0x370, 0x374},     {0x376, 0x377},     {0x37a, 0x37d},     {0x37f, 0x37f},
    {0x386, 0x386},     {0x388, 0x38a},     {0x38c, 0x38c},     {0x38e, 0x3a1},
    {0x3a3, 0x3f5},     {0x3f7, 0x481},     {0x48a, 0x52f},     {0x531, 0x556},
    {0x559, 0x559},     {0x560, 0x588},     {0x5d0, 0x5ea},     {0x5ef, 0x5f2},
    {0x620, 0x64a},     {0x66e, 0x66f},     {0x671, 0x6d3},     {0x6d5, 0x6d5},
    {0x6e5, 0x6e6},     {0x6ee, 0x6ef},     {0x6fa, 0x6fc},     {0x6ff, 0x6ff},
    {0x904, 0x939},     {0x93d, 0x93d},     {0x950, 0x950},     {0x958, 0x961},
    {0x971, 0x980},     {0xe01, 0xe30},     {0xe32, 0xe33},     {0xe40, 0xe46},
    {0x10a0, 0x10c5},   {0x10c7, 0x10c7},   {0x10cd, 0x10cd},   {0x10d0, 0x10fa},
    {0x10fc, 0x11ff},   {0x1e00, 0x1f15},   {0x1f18, 0x1f1d},   {0x1f20, 0x1f45},
    {0x1f48, 0x1f4d},   {0x1f50, 0x1f57},   {0x1f59, 0x1f59},   {0x1f5b, 0x1f5b},
    {0x1f5d, 0x1f5d},   {0x1f5f, 0x1f7d},   {0x1f80, 0x1fb4},   {0x1fb6, 0x1fbc},
    {0x1fbe, 0x1fbe},   {0x1fc2, 0x1fc4},   {0x1fc6, 0x1fcc},   {0x1fd0, 0x1fd3},
    {0x1fd6, 0x1fdb},   {0x1fe0, 0x1fec},   {0x1ff2, 0x1ff4},   {0x1ff6, 0x1ffc},
    {0x2071, 0x2071},   {0x207f, 0x207f},   {0x2090, 0x209c},   {0x2102, 0x2102},
    {0x2107, 0x2107},   {0x210a, 0x2113},   {0x2115, 0x2115},   {0x2119, 0x211d},
    {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},   {0x212a, 0x212d},
    {0x212f, 0x2139},   {0x213c, 0x213f},   {0x2145, 0x2149},   {0x214e, 0x214e},
    {0x2183, 0x2184},   {0x2c60, 0x2c7f},   {0x3005, 0x3006},   {0x3031, 0x3035},
    {0x303b, 0x303c},   {0x3041, 0x3096},   {0x309d, 0x309f},   {0x30a1, 0x30fa},
    {0x30fc, 0x30ff},   {0x3105, 0x312f},   {0x3131, 0x318e},   {0x31a0, 0x31bf},
    {0x31f0, 0x31ff},   {0x3400, 0x4dbf},   {0x4e00, 0xa48c},   {0xa640, 0xa66e},
    {0xac00, 0xd7a3},   {0xf900, 0xfa6d},   {0xfa70, 0xfad9},   {0xff21, 0xff3a},
    {0xff41, 0xff5a},   {0xff66, 0xffbe},   {0xffc2, 0xffc7},   {0xffca, 0xffcf},
    {0xffd2, 0xffd7},   {0xffda, 0xffdc},   {0x20000, 0x2a6df}, {0x2a700, 0x2ebe0},
    {0x30000, 0x3134a},
};

/* \p{N}: decimal digits of these scripts, superscripts, fractions, circled and
 * Roman numerals. */
static const cp_range numbers[] = {
    {0x30, 0x39},     {0xb2, 0xb3},     {0xb9, 0xb9},     {0xbc, 0xbe},
    {0x660, 0x669},   {0x6f0, 0x6f9},   {0x966, 0x96f},   {0xe50, 0xe59},
    {0x2070, 0x2070}, {0x2074, 0x2079}, {0x2080, 0x2089}, {0x2150, 0x2182},
    {0x2185, 0x2189}, {0x2460, 0x249b}, {0x24ea, 0x24ff}, {0x2776, 0x2793},
    {0x3007, 0x3007}, {0x3021, 0x3029}, {0x3038, 0x303a}, {0x3192, 0x3195},
    {0x3220, 0x3229}, {0x3248, 0x324f}, {0x3251, 0x325f}, {0x3280, 0x3289},
    {0x32b1, 0x32bf}, {0xff10, 0xff19},
};

/* \s: Unicode White_Space. */
static const cp_range spaces[] = {
    {0x09, 0x0d},     {0x20, 0x20},     {0x85, 0x85},     {0xa0, 0xa0},
    {0x1680, 0x1680}, {0x2000, 0x200a}, {0x2028, 0x2029}, {0x202f, 0x202f},
    {0x205f, 0x205f}, {0x3000, 0x3000},
};

static bool in_ranges(uint32_t cp, const cp_range *r, size_t n)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

#define IN(cp, table) in_ranges(cp, table, sizeof table / sizeof table[0])

static char_class classify(uint32_t cp)
{
    if (IN(cp, letters))
        return CLASS_LETTER;
    if (IN(cp, numbers))
        return CLASS_NUMBER;
    if (IN(cp, spaces))
        return CLASS_SPACE;
    return CLASS_OTHER;
}

/* Decodes one UTF-8 character at s[0..n); an invalid or truncated sequence
 * counts as one byte of class OTHER (byte-level BPE encodes any bytes). */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *len)
{
    uint32_t cp;
    *len = kvtc_utf8_decode(s, n, &cp);
    if (*len == 0) {
        *len = 1;
        return 0xfffd;
    }
    return cp;
}

static bool byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
}

/* GPT-2's byte <-> character map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes for U+0100 onwards, in byte order. */
static uint32_t byte_to_cp(unsigned b)
{
    if (byte_is_printable(b))
        return b;
    unsigned rank = 0; /* how many unprintable bytes come before b */
    for (unsigned x = 0; x < b; x++)
        rank += !byte_is_printable(x);
    return 0x100 + rank;
}

/* ---- the tokenizer --------------------------------------------------------------------- */

/* How text is split into words before BPE. */
typedef enum pre_tokenizer {
    PRE_GPT2,        /* the GPT-2 pattern */
    PRE_GPT2_DIGITS, /* every digit isolated first, then the GPT-2 pattern (SmolLM2) */
    PRE_QWEN2,       /* Qwen2's pattern: single digits, case-free contractions */
} pre_tokenizer;

typedef struct merge_slot {
    uint64_t pair; /* left id << 32 | right id; UINT64_MAX when empty */
    uint32_t rank;
    int32_t result;
} merge_slot;

struct tokenizer {
    uint32_t n_vocab;
    char *text;           /* token strings as stored in the GGUF, back to back */
    uint32_t *text_off;   /* [n_vocab + 1] */
    unsigned char *bytes; /* the bytes each token stands for */
    uint32_t *bytes_off;  /* [n_vocab + 1] */
    int32_t *vocab_slots; /* hash of text -> id; -1 when empty */
    size_t vocab_mask;
    merge_slot *merges;
    size_t merge_mask;
    int32_t byte_token[256]; /* -1: the vocabulary has no token for the byte */
    int32_t *specials; /* control/user-defined ids, by first byte then longest first */
    uint32_t n_specials;
    uint32_t special_start[257]; /* specials[special_start[b] .. special_start[b+1]) begin with b */
    int32_t bos, eos;
    pre_tokenizer pre;
    bool chatml;
    char *chat_system; /* the template's default system message, or NULL */
};

static uint64_t hash_bytes(const void *p, size_t n, uint64_t h)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull; /* FNV-1a */
    return h;
}
#define HASH_SEED 0xcbf29ce484222325ull

static size_t table_capacity(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    return cap;
}

static int32_t vocab_find(const tokenizer *t, const char *s, size_t n)
{
    for (size_t i = (size_t)hash_bytes(s, n, HASH_SEED) & t->vocab_mask;;
         i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[i];
        if (id < 0)
            return -1;
        if (t->text_off[id + 1] - t->text_off[id] == n && !memcmp(t->text + t->text_off[id], s, n))
            return id;
    }
}

static const merge_slot *merge_find(const tokenizer *t, int32_t left, int32_t right)
{
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = (size_t)hash_bytes(&pair, 8, HASH_SEED) & t->merge_mask;;
         i = (i + 1) & t->merge_mask) {
        if (t->merges[i].pair == pair)
            return &t->merges[i];
        if (t->merges[i].pair == UINT64_MAX)
            return NULL;
    }
}

static bool is_special(uint32_t type)
{
    return type == TOKEN_CONTROL || type == TOKEN_USER_DEFINED;
}

void tokenizer_free(tokenizer *t)
{
    if (!t)
        return;
    kvtc_free(t->text);
    kvtc_free(t->text_off);
    kvtc_free(t->bytes);
    kvtc_free(t->bytes_off);
    kvtc_free(t->vocab_slots);
    kvtc_free(t->merges);
    kvtc_free(t->specials);
    kvtc_free(t->chat_system);
    kvtc_free(t);
}

/* Copies the token strings and computes the bytes each stands for. */
static kvtc_status load_vocab(tokenizer *t, const kvtc_gguf_file *f, const int32_t *types,
                              kvtc_error *err)
{
    size_t total = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        const char *s;
        size_t n;
        kvtc_gguf_get_arr_str(f, "tokenizer.ggml.tokens", i, &s, &n);
        total += n;
        if (total > UINT32_MAX)
            return kvtc_fail(err, KVTC_E_FORMAT, "tokenizer: token strings too long");
    }
    t->text = kvtc_malloc(total);
    t->bytes = kvtc_malloc(total); /* unmapping never lengthens a token */
    t->text_off = kvtc_malloc_array(t->n_vocab + 1, sizeof *t->text_off);
    t->bytes_off = kvtc_malloc_array(t->n_vocab + 1, sizeof *t->bytes_off);
    if (!t->text || !t->bytes || !t->text_off || !t->bytes_off)
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory for %u tokens", t->n_vocab);
    int cp_to_byte[0x144];
    memset(cp_to_byte, -1, sizeof cp_to_byte);
    for (unsigned b = 0; b < 256; b++)
        cp_to_byte[byte_to_cp(b)] = (int)b;
    uint32_t at = 0, bat = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        const char *s;
        size_t n;
        kvtc_gguf_get_arr_str(f, "tokenizer.ggml.tokens", i, &s, &n);
        t->text_off[i] = at;
        t->bytes_off[i] = bat;
        memcpy(t->text + at, s, n);
        at += (uint32_t)n;
        if (is_special((uint32_t)types[i])) {
            memcpy(t->bytes + bat, s, n);
            bat += (uint32_t)n;
            continue;
        }
        for (size_t k = 0; k < n;) {
            size_t len;
            uint32_t cp = utf8_next((const unsigned char *)s + k, n - k, &len);
            if (cp < 0x144 && cp_to_byte[cp] >= 0) {
                t->bytes[bat++] = (unsigned char)cp_to_byte[cp];
            } else { /* not a mapped byte: keep the character itself */
                memcpy(t->bytes + bat, s + k, len);
                bat += (uint32_t)len;
            }
            k += len;
        }
    }
    t->text_off[t->n_vocab] = at;
    t->bytes_off[t->n_vocab] = bat;

    t->vocab_mask = table_capacity(t->n_vocab) - 1;
    t->vocab_slots = kvtc_malloc_array(t->vocab_mask + 1, sizeof *t->vocab_slots);
    if (!t->vocab_slots)
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory for the vocabulary index");
    memset(t->vocab_slots, -1, (t->vocab_mask + 1) * sizeof *t->vocab_slots);
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->text_off[id];
        size_t n = t->text_off[id + 1] - t->text_off[id];
        if (vocab_find(t, s, n) >= 0)
            continue; /* a duplicate string: the first id wins */
        size_t i = (size_t)hash_bytes(s, n, HASH_SEED) & t->vocab_mask;
        while (t->vocab_slots[i] >= 0)
            i = (i + 1) & t->vocab_mask;
        t->vocab_slots[i] = (int32_t)id;
    }
    /* SmolLM2 lacks a few control bytes (0x04, 0x06, ...): those stay -1. */
    for (unsigned b = 0; b < 256; b++) {
        unsigned char u[4];
        t->byte_token[b] = vocab_find(t, (const char *)u, kvtc_utf8_encode(byte_to_cp(b), (char *)u));
    }
    return KVTC_OK;
}

/* Merges "left right", rank = index; pairs of unknown tokens are skipped. */
static kvtc_status load_merges(tokenizer *t, const kvtc_gguf_file *f, kvtc_error *err)
{
    kvtc_gguf_value_type type;
    uint64_t n;
    if (!kvtc_gguf_get_arr_info(f, "tokenizer.ggml.merges", &type, &n) || type != KVTC_GGUF_STRING)
        return kvtc_fail(err, KVTC_E_FORMAT, "tokenizer: no tokenizer.ggml.merges string array");
    if (n > UINT32_MAX / 2)
        return kvtc_fail(err, KVTC_E_FORMAT, "tokenizer: too many merges (%llu)",
                         (unsigned long long)n);
    t->merge_mask = table_capacity((size_t)n) - 1;
    t->merges = kvtc_malloc_array(t->merge_mask + 1, sizeof *t->merges);
    char *joined = kvtc_malloc(t->text_off[t->n_vocab] + 1);
    if (!t->merges || !joined) {
        kvtc_free(joined);
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory for %llu merges",
                         (unsigned long long)n);
    }
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].pair = UINT64_MAX;
    for (uint32_t rank = 0; rank < n; rank++) {
        const char *s;
        size_t len;
        kvtc_gguf_get_arr_str(f, "tokenizer.ggml.merges", rank, &s, &len);
        const char *space = memchr(s, ' ', len);
        if (!space)
            continue;
        size_t nl = (size_t)(space - s), nr = len - nl - 1;
        int32_t left = vocab_find(t, s, nl), right = vocab_find(t, space + 1, nr);
        if (left < 0 || right < 0 || nl + nr > t->text_off[t->n_vocab])
            continue;
        memcpy(joined, s, nl);
        memcpy(joined + nl, space + 1, nr);
        int32_t result = vocab_find(t, joined, nl + nr);
        if (result < 0 || merge_find(t, left, right))
            continue; /* unknown result, or a repeated pair: the lower rank stays */
        uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        size_t i = (size_t)hash_bytes(&pair, 8, HASH_SEED) & t->merge_mask;
        while (t->merges[i].pair != UINT64_MAX)
            i = (i + 1) & t->merge_mask;
        t->merges[i] = (merge_slot){pair, rank, result};
    }
    kvtc_free(joined);
    return KVTC_OK;
}

static size_t token_bytes_len(const tokenizer *t, int32_t id)
{
    return t->bytes_off[id + 1] - t->bytes_off[id];
}

typedef struct special_key {
    unsigned char first;
    uint32_t len;
    int32_t id;
} special_key;

/* By first byte, longer first, so the first match at a position is the longest. */
static int special_order(const void *a, const void *b)
{
    const special_key *x = a, *y = b;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static kvtc_status load_specials(tokenizer *t, const int32_t *types, kvtc_error *err)
{
    uint32_t n = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        n += is_special((uint32_t)types[id]) && token_bytes_len(t, (int32_t)id) > 0;
    special_key *keys = kvtc_malloc_array(n, sizeof *keys);
    t->specials = kvtc_malloc_array(n, sizeof *t->specials);
    if (!keys || !t->specials) {
        kvtc_free(keys);
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory for %u special tokens", n);
    }
    uint32_t k = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        if (is_special((uint32_t)types[id]) && token_bytes_len(t, (int32_t)id) > 0)
            keys[k++] = (special_key){t->bytes[t->bytes_off[id]],
                                      (uint32_t)token_bytes_len(t, (int32_t)id), (int32_t)id};
    qsort(keys, n, sizeof *keys, special_order);
    memset(t->special_start, 0, sizeof t->special_start);
    for (uint32_t i = 0; i < n; i++) {
        t->specials[i] = keys[i].id;
        t->special_start[keys[i].first + 1] = i + 1;
    }
    for (int b = 1; b <= 256; b++) /* empty buckets start where the previous ends */
        if (t->special_start[b] < t->special_start[b - 1])
            t->special_start[b] = t->special_start[b - 1];
    t->n_specials = n;
    kvtc_free(keys);
    return KVTC_OK;
}

/* Pre-tokenizers with llama.cpp's names: the GPT-2 pattern, with or without
 * digits isolated first, and Qwen2's. */
static kvtc_status load_pre_tokenizer(tokenizer *t, const kvtc_gguf_file *f, kvtc_error *err)
{
    static const char *const with_digits[] = {"smollm", "starcoder", "refact", "command-r",
                                              "codeshell", "exaone", "minerva"};
    static const char *const plain[] = {"gpt2", "default", "mpt", "olmo", "jais"};
    const char *s;
    size_t n;
    if (!kvtc_gguf_get_str(f, "tokenizer.ggml.model", &s, &n) || n != 4 || memcmp(s, "gpt2", 4))
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "tokenizer: only byte-level BPE (tokenizer.ggml.model \"gpt2\") "
                         "is supported");
    if (!kvtc_gguf_get_str(f, "tokenizer.ggml.pre", &s, &n)) {
        s = "default";
        n = 7;
    }
    for (size_t i = 0; i < sizeof with_digits / sizeof *with_digits; i++)
        if (strlen(with_digits[i]) == n && !memcmp(s, with_digits[i], n)) {
            t->pre = PRE_GPT2_DIGITS;
            return KVTC_OK;
        }
    if (n == 5 && !memcmp(s, "qwen2", 5)) {
        t->pre = PRE_QWEN2;
        return KVTC_OK;
    }
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++)
        if (strlen(plain[i]) == n && !memcmp(s, plain[i], n))
            return KVTC_OK;
    return kvtc_fail(err, KVTC_E_UNSUPPORTED, "tokenizer: pre-tokenizer '%.*s' is not supported",
                     (int)(n < 64 ? n : 64), s);
}

static const char *find_bytes(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; m <= n && i <= n - m; i++)
        if (!memcmp(hay + i, needle, m))
            return hay + i;
    return NULL;
}

/* The default system message of a ChatML template, p just after its opening
 * "<|im_start|>system" and newline (written as is, or as the two characters
 * of the escape \n): the literal up to "<|im_end|>", when it has no
 * quote, brace or backslash (those would mean an expression such as
 * messages[0]['content'] or escapes we do not read). */
static kvtc_status default_system(const char *p, const char *tpl_end, char **out, kvtc_error *err)
{
    const char *q = find_bytes(p, (size_t)(tpl_end - p), "<|im_end|>");
    if (!q)
        return KVTC_OK;
    size_t len = (size_t)(q - p);
    if (memchr(p, '\'', len) || memchr(p, '"', len) || memchr(p, '{', len) ||
        memchr(p, '}', len) || memchr(p, '\\', len))
        return KVTC_OK;
    if (!(*out = kvtc_malloc(len + 1)))
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory");
    memcpy(*out, p, len);
    (*out)[len] = '\0';
    return KVTC_OK;
}

/* ChatML templates, and their default system message (SmolLM2 writes its
 * template's newlines as they are, Qwen2.5 as \n escapes). A model without a
 * template gets plain ChatML. */
static kvtc_status load_chat_template(tokenizer *t, const kvtc_gguf_file *f, kvtc_error *err)
{
    static const char *const starts[] = {"<|im_start|>system\n", "<|im_start|>system\\n"};
    const char *tpl;
    size_t n;
    if (!kvtc_gguf_get_str(f, "tokenizer.chat_template", &tpl, &n)) {
        t->chatml = true;
        return KVTC_OK;
    }
    t->chatml = find_bytes(tpl, n, "<|im_start|>") != NULL;
    for (size_t k = 0; k < sizeof starts / sizeof *starts && !t->chat_system; k++)
        for (const char *p = tpl; !t->chat_system &&
                                  (p = find_bytes(p, n - (size_t)(p - tpl), starts[k])) != NULL;) {
            p += strlen(starts[k]);
            kvtc_status st = default_system(p, tpl + n, &t->chat_system, err);
            if (st != KVTC_OK)
                return st;
        }
    return KVTC_OK;
}

static int32_t token_id_or_none(const tokenizer *t, const kvtc_gguf_file *f, const char *key)
{
    uint32_t id;
    return kvtc_gguf_get_u32(f, key, &id) && id < t->n_vocab ? (int32_t)id : -1;
}

kvtc_status tokenizer_load_gguf(const kvtc_gguf_file *f, tokenizer **out, kvtc_error *err)
{
    if (!f || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_load_gguf: no file or output given");
    *out = NULL;
    kvtc_gguf_value_type type;
    uint64_t n_vocab, n_types;
    const void *types_raw;
    if (!kvtc_gguf_get_arr_info(f, "tokenizer.ggml.tokens", &type, &n_vocab) ||
        type != KVTC_GGUF_STRING || n_vocab == 0 || n_vocab > INT32_MAX - 1)
        return kvtc_fail(err, KVTC_E_FORMAT, "tokenizer: no usable tokenizer.ggml.tokens array");
    if (!kvtc_gguf_get_arr_info(f, "tokenizer.ggml.token_type", &type, &n_types) ||
        type != KVTC_GGUF_INT32 || n_types != n_vocab ||
        !kvtc_gguf_get_arr_data(f, "tokenizer.ggml.token_type", &types_raw))
        return kvtc_fail(err, KVTC_E_FORMAT,
                         "tokenizer: tokenizer.ggml.token_type is not an int32 array of %llu",
                         (unsigned long long)n_vocab);
    tokenizer *t = kvtc_calloc(1, sizeof *t);
    int32_t *types = kvtc_malloc_array((size_t)n_vocab, sizeof *types);
    if (!t || !types) {
        kvtc_free(t);
        kvtc_free(types);
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory");
    }
    t->n_vocab = (uint32_t)n_vocab;
    memcpy(types, types_raw, (size_t)n_vocab * sizeof *types); /* the file may be unaligned */
    kvtc_status st;
    if ((st = load_pre_tokenizer(t, f, err)) || (st = load_vocab(t, f, types, err)) ||
        (st = load_merges(t, f, err)) || (st = load_specials(t, types, err)) ||
        (st = load_chat_template(t, f, err))) {
        kvtc_free(types);
        tokenizer_free(t);
        return st;
    }
    kvtc_free(types);
    t->bos = token_id_or_none(t, f, "tokenizer.ggml.bos_token_id");
    t->eos = token_id_or_none(t, f, "tokenizer.ggml.eos_token_id");
    *out = t;
    return KVTC_OK;
}

uint32_t tokenizer_vocab_size(const tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }

/* ---- encoding --------------------------------------------------------------------- */

/* Scratch of one encode call, sized by the text length. */
typedef struct bpe_heap_entry {
    uint32_t rank, pos;
} bpe_heap_entry;

typedef struct encoder {
    const tokenizer *t;
    const unsigned char *text;
    uint32_t *cps;      /* code points of the current span */
    uint32_t *cp_off;   /* their byte offsets; one extra at the end */
    unsigned char *cls; /* their classes */
    int32_t *sym_id;    /* BPE symbols of the current word */
    int32_t *sym_prev, *sym_next;
    bpe_heap_entry *heap;
    size_t heap_len;
    int32_t *ids;
    size_t n_ids;
} encoder;

static bool heap_less(bpe_heap_entry a, bpe_heap_entry b)
{
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void heap_push(encoder *e, uint32_t rank, uint32_t pos)
{
    size_t i = e->heap_len++;
    bpe_heap_entry x = {rank, pos};
    while (i > 0 && heap_less(x, e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = x;
}

static bpe_heap_entry heap_pop(encoder *e)
{
    bpe_heap_entry top = e->heap[0], x = e->heap[--e->heap_len];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= e->heap_len)
            break;
        if (c + 1 < e->heap_len && heap_less(e->heap[c + 1], e->heap[c]))
            c++;
        if (!heap_less(e->heap[c], x))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (e->heap_len)
        e->heap[i] = x;
    return top;
}

static void push_pair(encoder *e, int32_t pos)
{
    if (pos < 0 || e->sym_next[pos] < 0)
        return;
    const merge_slot *m = merge_find(e->t, e->sym_id[pos], e->sym_id[e->sym_next[pos]]);
    if (m)
        heap_push(e, m->rank, (uint32_t)pos);
}

/* BPE of one word (bytes [b0, b1) of the text): merges lowest rank first,
 * leftmost first among equal ranks. */
static void encode_word(encoder *e, size_t b0, size_t b1)
{
    const tokenizer *t = e->t;
    int32_t n = 0;
    for (size_t k = b0; k < b1; k++) {
        int32_t id = t->byte_token[e->text[k]];
        if (id < 0)
            continue; /* a byte the vocabulary lacks is dropped, as the reference does */
        e->sym_id[n] = id;
        e->sym_prev[n] = n - 1;
        e->sym_next[n] = -1;
        if (n > 0)
            e->sym_next[n - 1] = n;
        n++;
    }
    if (n == 0)
        return;
    e->heap_len = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(e, i);
    while (e->heap_len) {
        bpe_heap_entry top = heap_pop(e);
        int32_t pos = (int32_t)top.pos, next = e->sym_next[pos];
        if (e->sym_id[pos] < 0 || next < 0)
            continue; /* stale: pos was merged away or is now last */
        const merge_slot *m = merge_find(t, e->sym_id[pos], e->sym_id[next]);
        if (!m || m->rank != top.rank)
            continue; /* stale: a neighbour changed (ranks are unique per pair) */
        e->sym_id[pos] = m->result;
        e->sym_id[next] = -1;
        e->sym_next[pos] = e->sym_next[next];
        if (e->sym_next[pos] >= 0)
            e->sym_prev[e->sym_next[pos]] = pos;
        push_pair(e, e->sym_prev[pos]);
        push_pair(e, pos);
    }
    for (int32_t i = 0; i >= 0; i = e->sym_next[i])
        e->ids[e->n_ids++] = e->sym_id[i];
}

static const char *const contractions[] = {"re", "ve", "ll", "s", "t", "m", "d"};

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Where a contraction ('s 't 're 've 'm 'll 'd) starting at code point i ends,
 * or 0; any case of its letters with fold_case. */
static size_t contraction_end(const encoder *e, size_t i, size_t b, bool fold_case)
{
    const uint32_t *cp = e->cps;
    if (cp[i] != '\'')
        return 0;
    for (size_t k = 0; k < sizeof contractions / sizeof *contractions; k++) {
        size_t len = strlen(contractions[k]);
        bool match = i + len < b;
        for (size_t c = 0; match && c < len; c++)
            match = (fold_case ? ascii_lower(cp[i + 1 + c]) : cp[i + 1 + c]) ==
                    (uint32_t)contractions[k][c];
        if (match)
            return i + 1 + len;
    }
    return 0;
}

/* The GPT-2 pattern on code points [a, b) of the span:
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  */
static void split_gpt2(encoder *e, size_t a, size_t b)
{
    const uint32_t *cp = e->cps;
    const unsigned char *cls = e->cls;
    size_t i = a;
    while (i < b) {
        size_t end = contraction_end(e, i, b, false);
        if (!end) {
            /* An ASCII space joins a following letter, number or symbol run. */
            size_t j = cp[i] == ' ' && i + 1 < b && cls[i + 1] != CLASS_SPACE ? i + 1 : i;
            end = j + 1;
            if (cls[j] != CLASS_SPACE) {
                while (end < b && cls[end] == cls[j])
                    end++;
            } else {
                while (end < b && cls[end] == CLASS_SPACE)
                    end++;
                /* Before a non-space, the last space is left to start the next word. */
                if (end < b && end - i >= 2)
                    end--;
            }
        }
        encode_word(e, e->cp_off[i], e->cp_off[end]);
        i = end;
    }
}

static bool is_line_break(uint32_t cp) { return cp == '\r' || cp == '\n'; }

/* Where the word of Qwen2's pattern (llama.cpp's "qwen2") that starts at code
 * point i of [i, b) ends; its alternatives are tried in order, as the regex does:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+  */
static size_t qwen2_word_end(const encoder *e, size_t i, size_t b)
{
    const uint32_t *cp = e->cps;
    const unsigned char *cls = e->cls;
    size_t end = contraction_end(e, i, b, true);
    if (end)
        return end;
    /* A letter run, after at most one character that is no line break, letter or number. */
    size_t j = cls[i] != CLASS_LETTER && cls[i] != CLASS_NUMBER && !is_line_break(cp[i]) &&
                       i + 1 < b && cls[i + 1] == CLASS_LETTER
                   ? i + 1
                   : i;
    if (cls[j] == CLASS_LETTER) {
        for (end = j + 1; end < b && cls[end] == CLASS_LETTER;)
            end++;
        return end;
    }
    if (cls[i] == CLASS_NUMBER)
        return i + 1; /* digits one by one */
    /* A symbol run, after at most one ASCII space, takes the line breaks after it. */
    size_t k = cp[i] == ' ' && i + 1 < b && cls[i + 1] == CLASS_OTHER ? i + 1 : i;
    if (cls[k] == CLASS_OTHER) {
        for (end = k + 1; end < b && cls[end] == CLASS_OTHER;)
            end++;
        while (end < b && is_line_break(cp[end]))
            end++;
        return end;
    }
    /* A space run: up to its last line break; without one, all of it at the
     * end of the span, else all but the last space (which starts the next word). */
    size_t run = i, last_break = 0;
    for (; run < b && cls[run] == CLASS_SPACE; run++)
        if (is_line_break(cp[run]))
            last_break = run + 1;
    return last_break ? last_break : run == b || run - i == 1 ? run : run - 1;
}

static void split_qwen2(encoder *e, size_t a, size_t b)
{
    for (size_t i = a, end; i < b; i = end) {
        end = qwen2_word_end(e, i, b);
        encode_word(e, e->cp_off[i], e->cp_off[end]);
    }
}

/* Plain text between special tokens: decode, classify, split, encode. */
static void encode_span(encoder *e, size_t b0, size_t b1)
{
    size_t m = 0;
    for (size_t i = b0; i < b1; m++) {
        size_t len;
        e->cps[m] = utf8_next(e->text + i, b1 - i, &len);
        e->cls[m] = (unsigned char)classify(e->cps[m]);
        e->cp_off[m] = (uint32_t)i;
        i += len;
    }
    e->cp_off[m] = (uint32_t)b1;
    if (e->t->pre == PRE_QWEN2) {
        split_qwen2(e, 0, m);
        return;
    }
    if (e->t->pre == PRE_GPT2) {
        split_gpt2(e, 0, m);
        return;
    }
    size_t start = 0;
    for (size_t i = 0; i < m; i++)
        if (e->cls[i] == CLASS_NUMBER) {
            split_gpt2(e, start, i);
            encode_word(e, e->cp_off[i], e->cp_off[i + 1]);
            start = i + 1;
        }
    split_gpt2(e, start, m);
}

/* The longest special token at text[i..len), or -1. */
static int32_t special_at(const tokenizer *t, const unsigned char *text, size_t i, size_t len)
{
    for (uint32_t k = t->special_start[text[i]]; k < t->special_start[text[i] + 1]; k++) {
        int32_t id = t->specials[k];
        size_t n = token_bytes_len(t, id);
        if (n <= len - i && !memcmp(text + i, t->bytes + t->bytes_off[id], n))
            return id;
    }
    return -1;
}

static void encoder_free(encoder *e)
{
    kvtc_free(e->cps);
    kvtc_free(e->cp_off);
    kvtc_free(e->cls);
    kvtc_free(e->sym_id);
    kvtc_free(e->sym_prev);
    kvtc_free(e->sym_next);
    kvtc_free(e->heap);
}

kvtc_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_bos,
                             int32_t **ids, size_t *n_ids, kvtc_error *err)
{
    if (!t || (!text && len) || !ids || !n_ids)
        return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_encode: missing argument");
    *ids = NULL;
    *n_ids = 0;
    if (len >= INT32_MAX / 4)
        return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_encode: text of %zu bytes is too long",
                         len);
    encoder e = {.t = t, .text = (const unsigned char *)text};
    /* Every token covers at least one byte: len ids, plus BOS. Each merge
     * pushes at most two heap entries: 3 len in all. */
    e.ids = kvtc_malloc_array(len + 1, sizeof *e.ids);
    e.cps = kvtc_malloc_array(len + 1, sizeof *e.cps);
    e.cp_off = kvtc_malloc_array(len + 1, sizeof *e.cp_off);
    e.cls = kvtc_malloc(len + 1);
    e.sym_id = kvtc_malloc_array(len + 1, sizeof *e.sym_id);
    e.sym_prev = kvtc_malloc_array(len + 1, sizeof *e.sym_prev);
    e.sym_next = kvtc_malloc_array(len + 1, sizeof *e.sym_next);
    e.heap = kvtc_malloc_array(3 * len + 1, sizeof *e.heap);
    if (!e.ids || !e.cps || !e.cp_off || !e.cls || !e.sym_id || !e.sym_prev || !e.sym_next ||
        !e.heap) {
        encoder_free(&e);
        kvtc_free(e.ids);
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer_encode: out of memory for %zu bytes", len);
    }
    if (add_bos && t->bos >= 0)
        e.ids[e.n_ids++] = t->bos;
    size_t span = 0;
    for (size_t i = 0; i < len;) {
        int32_t special = special_at(t, e.text, i, len);
        if (special < 0) {
            i++;
            continue;
        }
        encode_span(&e, span, i);
        e.ids[e.n_ids++] = special;
        i += token_bytes_len(t, special);
        span = i;
    }
    encode_span(&e, span, len);
    encoder_free(&e);
    *ids = e.ids;
    *n_ids = e.n_ids;
    return KVTC_OK;
}

/* NUL-terminates a writer's bytes and hands them out as a string. */
static kvtc_status finish_string(kvtc_writer *w, char **out, kvtc_error *err)
{
    kvtc_put_u8(w, 0);
    if (w->failed) {
        kvtc_writer_free(w);
        return kvtc_fail(err, KVTC_E_NOMEM, "tokenizer: out of memory for the text");
    }
    *out = (char *)w->buf;
    return KVTC_OK;
}

/* ---- decoding --------------------------------------------------------------------- */

size_t tokenizer_token_bytes(const tokenizer *t, int32_t id, char *buf, size_t cap)
{
    if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
        return 0;
    size_t n = token_bytes_len(t, id);
    if (buf && cap)
        memcpy(buf, t->bytes + t->bytes_off[id], n < cap ? n : cap);
    return n;
}

kvtc_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, char **text,
                             kvtc_error *err)
{
    if (!t || (!ids && n) || !text)
        return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_decode: missing argument");
    *text = NULL;
    kvtc_writer w;
    kvtc_writer_init(&w);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->n_vocab) {
            kvtc_writer_free(&w);
            return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_decode: token id %d out of range "
                             "(vocabulary of %u)", (int)ids[i], t->n_vocab);
        }
        kvtc_put_bytes(&w, t->bytes + t->bytes_off[ids[i]], token_bytes_len(t, ids[i]));
    }
    return finish_string(&w, text, err);
}

/* ---- chat template -------------------------------------------------------------------- */

static void put_turn(kvtc_writer *w, const char *role, const char *content)
{
    kvtc_put_bytes(w, "<|im_start|>", 12);
    kvtc_put_bytes(w, role, strlen(role));
    kvtc_put_u8(w, '\n');
    kvtc_put_bytes(w, content, strlen(content));
    kvtc_put_bytes(w, "<|im_end|>\n", 11);
}

kvtc_status tokenizer_chat_prompt(const tokenizer *t, const chat_message *msgs, size_t n,
                                  bool add_generation_prompt, char **out, kvtc_error *err)
{
    if (!t || (!msgs && n) || !out)
        return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_chat_prompt: missing argument");
    *out = NULL;
    if (!t->chatml)
        return kvtc_fail(err, KVTC_E_UNSUPPORTED,
                         "tokenizer: the model's chat template is not ChatML");
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return kvtc_fail(err, KVTC_E_INVALID, "tokenizer_chat_prompt: message %zu has no "
                             "role or content", i);
    kvtc_writer w;
    kvtc_writer_init(&w);
    if (n > 0 && strcmp(msgs[0].role, "system") != 0 && t->chat_system)
        put_turn(&w, "system", t->chat_system);
    for (size_t i = 0; i < n; i++)
        put_turn(&w, msgs[i].role, msgs[i].content);
    if (add_generation_prompt)
        kvtc_put_bytes(&w, "<|im_start|>assistant\n", 22);
    return finish_string(&w, out, err);
}
