/* A small, strict JSON reader and writer; see json.h. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NODES (1u << 22)

struct kvtc_json {
    kvtc_json_value *nodes; /* nodes[0] is the root */
    char *strings;          /* decoded strings and number texts, NUL-separated */
};

/* ---- numbers ---------------------------------------------------------------- */

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Length of the JSON number at the start of s[0, n), 0 if there is none. */
static size_t scan_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (i < n && is_digit(s[i]))
            i++;
    } else {
        return 0;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit(s[i]))
            return 0;
        while (i < n && is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= n || !is_digit(s[i]))
            return 0;
        while (i < n && is_digit(s[i]))
            i++;
    }
    return i;
}

bool kvtc_parse_double(const char *s, size_t len, double *out)
{
    if (!s || len == 0 || len > KVTC_JSON_MAX_NUMBER_LEN || scan_number(s, len) != len)
        return false;
    /* Rewrite as "[-]DIGITSeEXP" with no decimal point, so strtod's reading
     * does not depend on the locale's radix character. */
    char buf[KVTC_JSON_MAX_NUMBER_LEN + 32];
    size_t o = 0, i = 0;
    long exp_adjust = 0;
    if (s[i] == '-')
        buf[o++] = s[i++];
    while (i < len && is_digit(s[i]))
        buf[o++] = s[i++];
    if (i < len && s[i] == '.') {
        for (i++; i < len && is_digit(s[i]); i++, exp_adjust--)
            buf[o++] = s[i];
    }
    long exponent = 0;
    if (i < len) { /* 'e' or 'E' */
        i++;
        bool neg = s[i] == '-';
        if (s[i] == '+' || s[i] == '-')
            i++;
        for (; i < len; i++)
            if (exponent < 100000000L)
                exponent = exponent * 10 + (s[i] - '0');
        if (neg)
            exponent = -exponent;
    }
    snprintf(buf + o, sizeof buf - o, "e%ld", exponent + exp_adjust);
    errno = 0;
    char *end;
    double v = strtod(buf, &end);
    if (*end != '\0' || (errno == ERANGE && isinf(v)))
        return false;
    *out = v;
    return true;
}

bool kvtc_parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (!s || len == 0 || (s[0] == '0' && len > 1))
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

const char *kvtc_format_double(double v, char buf[KVTC_NUMBER_BUF])
{
    if (!isfinite(v)) {
        memcpy(buf, "null", 5);
        return buf;
    }
    if (v == trunc(v) && fabs(v) < 1e17) {
        snprintf(buf, KVTC_NUMBER_BUF, "%.0f", v);
        return buf;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, KVTC_NUMBER_BUF, "%.*g", prec, v);
        /* Put back a '.' where the locale wrote its own radix character. */
        size_t n = strlen(buf), start = strspn(buf, "0123456789+-eE");
        if (start < n) {
            size_t end = start;
            while (end < n && !strchr("0123456789+-eE", buf[end]))
                end++;
            buf[start] = '.';
            memmove(buf + start + 1, buf + end, n - end + 1);
        }
        double back;
        if (kvtc_parse_double(buf, strlen(buf), &back) && back == v)
            break;
    }
    return buf;
}

/* ---- parser ------------------------------------------------------------------- */

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *strings; /* output area: len + 1 bytes always suffice (see kvtc_json_parse) */
    size_t strings_len;
    kvtc_json_value *nodes;
    uint32_t *child, *next, *last; /* links by index while the node array grows; 0 = none */
    size_t n_nodes, cap;
    kvtc_error *err;
} parser;

static kvtc_status syntax_error(parser *ps, const char *what)
{
    return kvtc_fail(ps->err, KVTC_E_FORMAT, "invalid JSON at byte %zu: %s", ps->pos, what);
}

static void skip_space(parser *ps)
{
    while (ps->pos < ps->len) {
        char c = ps->s[ps->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        ps->pos++;
    }
}

static bool grow(void **p, size_t old_n, size_t new_n, size_t size)
{
    void *np = kvtc_malloc_array(new_n, size);
    if (!np)
        return false;
    if (old_n)
        memcpy(np, *p, old_n * size);
    kvtc_free(*p);
    *p = np;
    return true;
}

static kvtc_status new_node(parser *ps, kvtc_json_type type, uint32_t *index)
{
    if (ps->n_nodes >= MAX_NODES)
        return kvtc_fail(ps->err, KVTC_E_FORMAT, "JSON has more than %u values", MAX_NODES);
    if (ps->n_nodes == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        if (!grow((void **)&ps->nodes, ps->n_nodes, cap, sizeof *ps->nodes) ||
            !grow((void **)&ps->child, ps->n_nodes, cap, sizeof *ps->child) ||
            !grow((void **)&ps->next, ps->n_nodes, cap, sizeof *ps->next) ||
            !grow((void **)&ps->last, ps->n_nodes, cap, sizeof *ps->last))
            return kvtc_fail(ps->err, KVTC_E_NOMEM, "out of memory parsing JSON");
        ps->cap = cap;
    }
    size_t i = ps->n_nodes++;
    memset(&ps->nodes[i], 0, sizeof ps->nodes[i]);
    ps->nodes[i].type = type;
    ps->child[i] = ps->next[i] = ps->last[i] = 0;
    *index = (uint32_t)i;
    return KVTC_OK;
}

static void append_child(parser *ps, uint32_t parent, uint32_t item)
{
    if (ps->last[parent])
        ps->next[ps->last[parent]] = item;
    else
        ps->child[parent] = item;
    ps->last[parent] = item;
    ps->nodes[parent].count++;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at ps->pos (after "\u"). */
static bool read_hex4(parser *ps, uint32_t *v)
{
    if (ps->len - ps->pos < 4)
        return false;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(ps->s[ps->pos + i]);
        if (h < 0)
            return false;
        *v = (*v << 4) | (uint32_t)h;
    }
    ps->pos += 4;
    return true;
}

/* Decodes the string starting at the opening quote into the strings area. */
static kvtc_status parse_string(parser *ps, const char **out, size_t *out_len)
{
    ps->pos++; /* opening quote */
    char *dst = ps->strings + ps->strings_len;
    size_t n = 0;
    for (;;) {
        if (ps->pos >= ps->len)
            return syntax_error(ps, "unterminated string");
        unsigned char c = (unsigned char)ps->s[ps->pos];
        if (c == '"') {
            ps->pos++;
            break;
        }
        if (c < 0x20)
            return syntax_error(ps, "control character in string");
        if (c != '\\') {
            uint32_t cp;
            size_t k = kvtc_utf8_decode((const unsigned char *)ps->s + ps->pos, ps->len - ps->pos, &cp);
            if (k == 0)
                return syntax_error(ps, "invalid UTF-8 in string");
            memcpy(dst + n, ps->s + ps->pos, k);
            n += k;
            ps->pos += k;
            continue;
        }
        if (ps->len - ps->pos < 2)
            return syntax_error(ps, "unterminated escape");
        char e = ps->s[ps->pos + 1];
        ps->pos += 2;
        switch (e) {
        case '"': dst[n++] = '"'; continue;
        case '\\': dst[n++] = '\\'; continue;
        case '/': dst[n++] = '/'; continue;
        case 'b': dst[n++] = '\b'; continue;
        case 'f': dst[n++] = '\f'; continue;
        case 'n': dst[n++] = '\n'; continue;
        case 'r': dst[n++] = '\r'; continue;
        case 't': dst[n++] = '\t'; continue;
        case 'u': break;
        default: ps->pos -= 2; return syntax_error(ps, "invalid escape");
        }
        uint32_t cp;
        if (!read_hex4(ps, &cp))
            return syntax_error(ps, "invalid \\u escape");
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return syntax_error(ps, "unpaired low surrogate");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            uint32_t lo;
            if (ps->len - ps->pos < 2 || ps->s[ps->pos] != '\\' || ps->s[ps->pos + 1] != 'u')
                return syntax_error(ps, "unpaired high surrogate");
            ps->pos += 2;
            if (!read_hex4(ps, &lo) || lo < 0xdc00 || lo > 0xdfff)
                return syntax_error(ps, "unpaired high surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0)
            return syntax_error(ps, "\\u0000 is not supported");
        n += kvtc_utf8_encode(cp, dst + n);
    }
    dst[n] = '\0';
    ps->strings_len += n + 1;
    *out = dst;
    *out_len = n;
    return KVTC_OK;
}

static bool match_word(parser *ps, const char *word)
{
    size_t n = strlen(word);
    if (ps->len - ps->pos < n || memcmp(ps->s + ps->pos, word, n) != 0)
        return false;
    ps->pos += n;
    return true;
}

static kvtc_status parse_value(parser *ps, int depth, uint32_t *index);

static kvtc_status parse_container(parser *ps, int depth, bool is_object, uint32_t *index)
{
    if (depth >= KVTC_JSON_MAX_DEPTH)
        return syntax_error(ps, "nested too deeply");
    kvtc_status st = new_node(ps, is_object ? KVTC_JSON_OBJECT : KVTC_JSON_ARRAY, index);
    if (st != KVTC_OK)
        return st;
    char close = is_object ? '}' : ']';
    ps->pos++; /* '{' or '[' */
    skip_space(ps);
    if (ps->pos < ps->len && ps->s[ps->pos] == close) {
        ps->pos++;
        return KVTC_OK;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        if (is_object) {
            if (ps->pos >= ps->len || ps->s[ps->pos] != '"')
                return syntax_error(ps, "expected a member name");
            if ((st = parse_string(ps, &key, &key_len)) != KVTC_OK)
                return st;
            skip_space(ps);
            if (ps->pos >= ps->len || ps->s[ps->pos] != ':')
                return syntax_error(ps, "expected ':'");
            ps->pos++;
            skip_space(ps);
        }
        uint32_t item;
        if ((st = parse_value(ps, depth + 1, &item)) != KVTC_OK)
            return st;
        ps->nodes[item].key = key;
        ps->nodes[item].key_len = key_len;
        append_child(ps, *index, item);
        skip_space(ps);
        if (ps->pos < ps->len && ps->s[ps->pos] == ',') {
            ps->pos++;
            skip_space(ps);
            continue;
        }
        if (ps->pos < ps->len && ps->s[ps->pos] == close) {
            ps->pos++;
            return KVTC_OK;
        }
        return syntax_error(ps, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static kvtc_status parse_value(parser *ps, int depth, uint32_t *index)
{
    if (ps->pos >= ps->len)
        return syntax_error(ps, "unexpected end of input");
    char c = ps->s[ps->pos];
    kvtc_status st;
    if (c == '{' || c == '[')
        return parse_container(ps, depth, c == '{', index);
    if (c == '"') {
        if ((st = new_node(ps, KVTC_JSON_STRING, index)) != KVTC_OK)
            return st;
        const char *str;
        size_t n;
        if ((st = parse_string(ps, &str, &n)) != KVTC_OK)
            return st;
        ps->nodes[*index].str = str;
        ps->nodes[*index].str_len = n;
        return KVTC_OK;
    }
    if (c == '-' || is_digit(c)) {
        size_t n = scan_number(ps->s + ps->pos, ps->len - ps->pos);
        if (n == 0)
            return syntax_error(ps, "invalid number");
        double v;
        if (!kvtc_parse_double(ps->s + ps->pos, n, &v))
            return syntax_error(ps, "number too long or out of range");
        if ((st = new_node(ps, KVTC_JSON_NUMBER, index)) != KVTC_OK)
            return st;
        char *text = ps->strings + ps->strings_len;
        memcpy(text, ps->s + ps->pos, n);
        text[n] = '\0';
        ps->strings_len += n + 1;
        ps->pos += n;
        ps->nodes[*index].str = text;
        ps->nodes[*index].str_len = n;
        ps->nodes[*index].number = v;
        return KVTC_OK;
    }
    kvtc_json_type type;
    if (match_word(ps, "true"))
        type = KVTC_JSON_TRUE;
    else if (match_word(ps, "false"))
        type = KVTC_JSON_FALSE;
    else if (match_word(ps, "null"))
        type = KVTC_JSON_NULL;
    else
        return syntax_error(ps, "unexpected character");
    return new_node(ps, type, index);
}

static int compare_keys(const void *a, const void *b)
{
    const kvtc_json_value *x = *(const kvtc_json_value *const *)a;
    const kvtc_json_value *y = *(const kvtc_json_value *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* Sorting each object's member names finds duplicates in n log n, so a
 * hostile header with many members cannot make this quadratic. */
static kvtc_status check_duplicate_keys(kvtc_json_value *nodes, size_t n_nodes, kvtc_error *err)
{
    uint32_t max_count = 0;
    for (size_t i = 0; i < n_nodes; i++)
        if (nodes[i].type == KVTC_JSON_OBJECT && nodes[i].count > max_count)
            max_count = nodes[i].count;
    if (max_count < 2)
        return KVTC_OK;
    const kvtc_json_value **members = kvtc_malloc_array(max_count, sizeof *members);
    if (!members)
        return kvtc_fail(err, KVTC_E_NOMEM, "out of memory parsing JSON");
    kvtc_status st = KVTC_OK;
    for (size_t i = 0; i < n_nodes && st == KVTC_OK; i++) {
        if (nodes[i].type != KVTC_JSON_OBJECT || nodes[i].count < 2)
            continue;
        uint32_t m = 0;
        for (const kvtc_json_value *v = nodes[i].child; v; v = v->next)
            members[m++] = v;
        qsort(members, m, sizeof *members, compare_keys);
        for (uint32_t j = 1; j < m; j++)
            if (compare_keys(&members[j - 1], &members[j]) == 0) {
                st = kvtc_fail(err, KVTC_E_FORMAT, "invalid JSON: duplicate member name \"%.64s\"",
                               members[j]->key);
                break;
            }
    }
    kvtc_free(members);
    return st;
}

kvtc_status kvtc_json_parse(const char *text, size_t len, kvtc_json **out, kvtc_error *err)
{
    if (!out || (!text && len))
        return kvtc_fail(err, KVTC_E_INVALID, "kvtc_json_parse: no text or output given");
    *out = NULL;
    if (len > KVTC_JSON_MAX_INPUT)
        return kvtc_fail(err, KVTC_E_FORMAT, "JSON text of %zu bytes is too large (max %zu)", len,
                         KVTC_JSON_MAX_INPUT);
    parser ps = {.s = text, .len = len, .err = err};
    kvtc_json *doc = kvtc_calloc(1, sizeof *doc);
    /* A string's decoded text plus its NUL is no longer than the string with
     * its quotes, and a number's text plus NUL fits in the number and the byte
     * after it (or the one extra byte at the end), so len + 1 bytes suffice. */
    ps.strings = kvtc_malloc(len + 1);
    kvtc_status st;
    if (!doc || !ps.strings) {
        st = kvtc_fail(err, KVTC_E_NOMEM, "out of memory parsing JSON");
        goto done;
    }
    skip_space(&ps);
    uint32_t root;
    if ((st = parse_value(&ps, 0, &root)) != KVTC_OK)
        goto done;
    skip_space(&ps);
    if (ps.pos != ps.len) {
        st = syntax_error(&ps, "unexpected data after the value");
        goto done;
    }
    for (size_t i = 0; i < ps.n_nodes; i++) {
        ps.nodes[i].child = ps.child[i] ? &ps.nodes[ps.child[i]] : NULL;
        ps.nodes[i].next = ps.next[i] ? &ps.nodes[ps.next[i]] : NULL;
    }
    if ((st = check_duplicate_keys(ps.nodes, ps.n_nodes, err)) != KVTC_OK)
        goto done;
    doc->nodes = ps.nodes;
    doc->strings = ps.strings;
    ps.nodes = NULL;
    ps.strings = NULL;
    *out = doc;
    doc = NULL;
done:
    kvtc_free(ps.nodes);
    kvtc_free(ps.child);
    kvtc_free(ps.next);
    kvtc_free(ps.last);
    kvtc_free(ps.strings);
    kvtc_free(doc);
    return st;
}

void kvtc_json_free(kvtc_json *doc)
{
    if (!doc)
        return;
    kvtc_free(doc->nodes);
    kvtc_free(doc->strings);
    kvtc_free(doc);
}

const kvtc_json_value *kvtc_json_root(const kvtc_json *doc) { return doc ? doc->nodes : NULL; }

const kvtc_json_value *kvtc_json_get(const kvtc_json_value *obj, const char *key)
{
    if (!obj || obj->type != KVTC_JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (const kvtc_json_value *v = obj->child; v; v = v->next)
        if (v->key_len == n && memcmp(v->key, key, n) == 0)
            return v;
    return NULL;
}

bool kvtc_json_u64(const kvtc_json_value *v, uint64_t *out)
{
    return v && v->type == KVTC_JSON_NUMBER && kvtc_parse_u64(v->str, v->str_len, out);
}

const char *kvtc_json_type_name(kvtc_json_type type)
{
    switch (type) {
    case KVTC_JSON_NULL: return "null";
    case KVTC_JSON_FALSE:
    case KVTC_JSON_TRUE: return "boolean";
    case KVTC_JSON_NUMBER: return "number";
    case KVTC_JSON_STRING: return "string";
    case KVTC_JSON_ARRAY: return "array";
    case KVTC_JSON_OBJECT: return "object";
    }
    return "unknown";
}

/* ---- writer ------------------------------------------------------------------- */

void kvtc_jw_init(kvtc_json_writer *jw, kvtc_writer *out, bool pretty)
{
    memset(jw, 0, sizeof *jw);
    jw->out = out;
    jw->pretty = pretty;
}

static void put_str(kvtc_json_writer *jw, const char *s) { kvtc_put_bytes(jw->out, s, strlen(s)); }

static void newline_indent(kvtc_json_writer *jw, int depth)
{
    kvtc_put_u8(jw->out, '\n');
    for (int i = 0; i < depth; i++)
        put_str(jw, "  ");
}

/* Separator before a value or member name. */
static void before_item(kvtc_json_writer *jw)
{
    if (jw->after_key) {
        jw->after_key = false;
        return;
    }
    if (jw->depth == 0)
        return;
    if (jw->has_items[jw->depth])
        kvtc_put_u8(jw->out, ',');
    if (jw->pretty)
        newline_indent(jw, jw->depth);
    jw->has_items[jw->depth] = true;
}

static void begin(kvtc_json_writer *jw, char open)
{
    before_item(jw);
    kvtc_put_u8(jw->out, (uint8_t)open);
    if (jw->depth >= KVTC_JSON_MAX_DEPTH) {
        jw->out->failed = true; /* misuse: the output could not be valid */
        return;
    }
    jw->has_items[++jw->depth] = false;
}

static void end(kvtc_json_writer *jw, char close)
{
    if (jw->depth == 0) {
        jw->out->failed = true;
        return;
    }
    bool had_items = jw->has_items[jw->depth--];
    if (jw->pretty && had_items)
        newline_indent(jw, jw->depth);
    kvtc_put_u8(jw->out, (uint8_t)close);
}

void kvtc_jw_begin_object(kvtc_json_writer *jw) { begin(jw, '{'); }
void kvtc_jw_end_object(kvtc_json_writer *jw) { end(jw, '}'); }
void kvtc_jw_begin_array(kvtc_json_writer *jw) { begin(jw, '['); }
void kvtc_jw_end_array(kvtc_json_writer *jw) { end(jw, ']'); }

static void put_escaped(kvtc_json_writer *jw, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    kvtc_put_u8(jw->out, '"');
    size_t i = 0;
    while (i < len) {
        unsigned c = u[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        }
        if (esc) {
            put_str(jw, esc);
            i++;
        } else if (c < 0x20) {
            char buf[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], '\0'};
            put_str(jw, buf);
            i++;
        } else {
            uint32_t cp;
            size_t k = kvtc_utf8_decode(u + i, len - i, &cp);
            if (k == 0) {
                put_str(jw, "\xef\xbf\xbd"); /* U+FFFD for a byte that is not UTF-8 */
                i++;
            } else {
                kvtc_put_bytes(jw->out, u + i, k);
                i += k;
            }
        }
    }
    kvtc_put_u8(jw->out, '"');
}

void kvtc_jw_key(kvtc_json_writer *jw, const char *key)
{
    before_item(jw);
    put_escaped(jw, key, strlen(key));
    put_str(jw, jw->pretty ? ": " : ":");
    jw->after_key = true;
}

void kvtc_jw_string_n(kvtc_json_writer *jw, const char *s, size_t len)
{
    before_item(jw);
    put_escaped(jw, s, len);
}

void kvtc_jw_string(kvtc_json_writer *jw, const char *s) { kvtc_jw_string_n(jw, s, strlen(s)); }

void kvtc_jw_double(kvtc_json_writer *jw, double v)
{
    char buf[KVTC_NUMBER_BUF];
    before_item(jw);
    put_str(jw, kvtc_format_double(v, buf));
}

void kvtc_jw_int(kvtc_json_writer *jw, int64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%lld", (long long)v);
    before_item(jw);
    put_str(jw, buf);
}

void kvtc_jw_uint(kvtc_json_writer *jw, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    before_item(jw);
    put_str(jw, buf);
}

void kvtc_jw_bool(kvtc_json_writer *jw, bool v)
{
    before_item(jw);
    put_str(jw, v ? "true" : "false");
}

void kvtc_jw_null(kvtc_json_writer *jw)
{
    before_item(jw);
    put_str(jw, "null");
}
