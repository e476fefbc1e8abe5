/* A small, strict JSON reader and writer (RFC 8259) for the safetensors header
 * and the CLI's --json output. Internal to kvtc; not installed.
 *
 * The reader takes untrusted input: it never reads outside the given bytes,
 * bounds nesting depth, input size and node count, and rejects what RFC 8259
 * does not allow plus a few things it merely discourages: invalid UTF-8,
 * unpaired surrogates, duplicate object keys, and "\u0000" (so every decoded
 * string is an ordinary C string). */
#ifndef KVTC_JSON_H
#define KVTC_JSON_H

#include "kvtc_internal.h"

#define KVTC_JSON_MAX_DEPTH 64
#define KVTC_JSON_MAX_INPUT ((size_t)100 << 20)
#define KVTC_JSON_MAX_NUMBER_LEN 128

typedef enum kvtc_json_type {
    KVTC_JSON_NULL,
    KVTC_JSON_FALSE,
    KVTC_JSON_TRUE,
    KVTC_JSON_NUMBER,
    KVTC_JSON_STRING,
    KVTC_JSON_ARRAY,
    KVTC_JSON_OBJECT
} kvtc_json_type;

/* One value of a parsed document. Children of an array or object are linked
 * from `child` through `next`, in document order; an object's children carry
 * their member name in `key`. Everything is owned by the document. */
typedef struct kvtc_json_value kvtc_json_value;
struct kvtc_json_value {
    kvtc_json_type type;
    uint32_t count;               /* children of an array or object */
    const kvtc_json_value *child; /* first child, NULL if none */
    const kvtc_json_value *next;  /* next sibling, NULL if last */
    const char *key;              /* member name (object children), else NULL */
    size_t key_len;
    const char *str; /* decoded string, or a number's text as written; NUL-terminated */
    size_t str_len;
    double number; /* numbers: the nearest double */
};

typedef struct kvtc_json kvtc_json;

/* Parses len bytes (need not be NUL-terminated). Leading and trailing JSON
 * whitespace is allowed, anything else after the value is an error. Errors are
 * KVTC_E_FORMAT with the byte offset, or KVTC_E_NOMEM. */
kvtc_status kvtc_json_parse(const char *text, size_t len, kvtc_json **out, kvtc_error *err);
void kvtc_json_free(kvtc_json *doc);
const kvtc_json_value *kvtc_json_root(const kvtc_json *doc);

/* The member `key` of an object, or NULL (also when obj is not an object). */
const kvtc_json_value *kvtc_json_get(const kvtc_json_value *obj, const char *key);
/* A number written as a plain non-negative integer that fits: no sign,
 * fraction or exponent. */
bool kvtc_json_u64(const kvtc_json_value *v, uint64_t *out);
const char *kvtc_json_type_name(kvtc_json_type type);

/* Strict text-to-number conversions, independent of the C locale: the whole
 * of s[0, len) must be the number. kvtc_parse_double takes JSON number syntax
 * ("-1.5e3"; no "inf", "nan", "+1", " 1" or hex) and rejects results that
 * overflow. kvtc_parse_u64 takes decimal digits only, no leading zeros. */
bool kvtc_parse_double(const char *s, size_t len, double *out);
bool kvtc_parse_u64(const char *s, size_t len, uint64_t *out);

/* Shortest decimal text that reads back as exactly v ("0.1", "1e+300");
 * "null" for non-finite values. buf needs KVTC_NUMBER_BUF bytes. */
#define KVTC_NUMBER_BUF 32
const char *kvtc_format_double(double v, char buf[KVTC_NUMBER_BUF]);

/* ---- writer -------------------------------------------------------------- */

/* Appends JSON text to a kvtc_writer. The writer places commas, colons and
 * (when pretty) newlines and two-space indentation itself; the caller only
 * says what comes next. Strings are escaped, and invalid UTF-8 in them is
 * written as U+FFFD, so the output is always valid JSON when the calls nest
 * properly. Allocation failure is remembered in the kvtc_writer. */
typedef struct kvtc_json_writer {
    kvtc_writer *out;
    bool pretty;
    bool after_key;  /* a member name was just written: no comma or newline */
    int depth;
    bool has_items[KVTC_JSON_MAX_DEPTH + 1]; /* per open container: a value was written */
} kvtc_json_writer;

void kvtc_jw_init(kvtc_json_writer *jw, kvtc_writer *out, bool pretty);
void kvtc_jw_begin_object(kvtc_json_writer *jw);
void kvtc_jw_end_object(kvtc_json_writer *jw);
void kvtc_jw_begin_array(kvtc_json_writer *jw);
void kvtc_jw_end_array(kvtc_json_writer *jw);
void kvtc_jw_key(kvtc_json_writer *jw, const char *key);
void kvtc_jw_string(kvtc_json_writer *jw, const char *s);
void kvtc_jw_string_n(kvtc_json_writer *jw, const char *s, size_t len);
void kvtc_jw_double(kvtc_json_writer *jw, double v); /* non-finite: null */
void kvtc_jw_int(kvtc_json_writer *jw, int64_t v);
void kvtc_jw_uint(kvtc_json_writer *jw, uint64_t v);
void kvtc_jw_bool(kvtc_json_writer *jw, bool v);
void kvtc_jw_null(kvtc_json_writer *jw);

#endif /* KVTC_JSON_H */
