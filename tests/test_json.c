/* The strict JSON reader and the writer: valid documents decode to the right
 * values, malformed and hostile ones are rejected without crashing, numbers
 * round-trip, and what the writer produces reads back. */
#include "json.h"
#include "testutil.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static kvtc_json *parse_ok(const char *text, size_t len)
{
    kvtc_json *doc = NULL;
    kvtc_error err;
    CHECK_MSG(kvtc_json_parse(text, len, &doc, &err) == KVTC_OK, "rejected valid %.60s: %s",
              text, err.message);
    return doc;
}

static void expect_invalid(const char *text, size_t len)
{
    kvtc_json *doc = (kvtc_json *)1;
    kvtc_error err = {0};
    kvtc_status st = kvtc_json_parse(text, len, &doc, &err);
    CHECK_MSG(st == KVTC_E_FORMAT, "accepted or wrong status %d for invalid \"%.60s\"", (int)st,
              text);
    CHECK_MSG(doc == NULL, "output not cleared for \"%.60s\"", text);
    CHECK_MSG(st == KVTC_OK || strlen(err.message) > 0, "no message for \"%.60s\"", text);
    if (st == KVTC_OK)
        kvtc_json_free(doc);
}

static void test_valid(void)
{
    static const char text[] =
        " {\"s\": \"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\xc3\xa9\","
        "  \"n\": [0, -0, 1.5, -1e10, 1E+2, 2.5e-3, 18446744073709551615],"
        "  \"t\": true, \"f\": false, \"z\": null, \"e\": {}, \"a\": [[]],"
        "  \"\": \"empty key\"}\r\n\t";
    kvtc_json *doc = parse_ok(text, sizeof text - 1);
    if (!doc)
        return;
    const kvtc_json_value *root = kvtc_json_root(doc);
    CHECK_EQ(root->type, KVTC_JSON_OBJECT);
    CHECK_EQ(root->count, 8);
    const kvtc_json_value *s = kvtc_json_get(root, "s");
    static const char want[] = "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\xc3\xa9";
    CHECK(s && s->type == KVTC_JSON_STRING && s->str_len == sizeof want - 1 &&
          memcmp(s->str, want, sizeof want) == 0);

    const kvtc_json_value *n = kvtc_json_get(root, "n");
    static const double nums[] = {0, -0.0, 1.5, -1e10, 100, 2.5e-3, 18446744073709551615.0};
    if (CHECK(n && n->type == KVTC_JSON_ARRAY && n->count == 7)) {
        const kvtc_json_value *v = n->child;
        for (int i = 0; i < 7; i++, v = v->next)
            CHECK_MSG(v->type == KVTC_JSON_NUMBER && v->number == nums[i], "number %d: %s", i,
                      v->str);
        uint64_t u;
        CHECK(kvtc_json_u64(n->child, &u) && u == 0);
        CHECK(!kvtc_json_u64(n->child->next, &u)); /* -0 is not a plain integer */
        CHECK(!kvtc_json_u64(n->child->next->next, &u));
        v = n->child;
        for (int i = 0; i < 6; i++)
            v = v->next;
        CHECK(kvtc_json_u64(v, &u) && u == UINT64_MAX);
    }
    CHECK(kvtc_json_get(root, "t")->type == KVTC_JSON_TRUE);
    CHECK(kvtc_json_get(root, "f")->type == KVTC_JSON_FALSE);
    CHECK(kvtc_json_get(root, "z")->type == KVTC_JSON_NULL);
    CHECK(kvtc_json_get(root, "e")->count == 0 && kvtc_json_get(root, "e")->child == NULL);
    CHECK(kvtc_json_get(root, "a")->child->type == KVTC_JSON_ARRAY);
    CHECK(strcmp(kvtc_json_get(root, "")->str, "empty key") == 0);
    CHECK(kvtc_json_get(root, "missing") == NULL);
    CHECK(kvtc_json_get(n, "s") == NULL); /* not an object */
    kvtc_json_free(doc);

    static const char *const scalars[] = {"0", "\"\"", "true", "null", "[]", " -1.25e-7 "};
    for (size_t i = 0; i < sizeof scalars / sizeof scalars[0]; i++)
        kvtc_json_free(parse_ok(scalars[i], strlen(scalars[i])));
}

static void test_invalid(void)
{
    static const char *const bad[] = {
        "", " ", "{", "}", "[1,]", "[,1]", "[1 2]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}",
        "{a:1}", "{1:1}", "'a'", "01", "-01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10",
        "NaN", "Infinity", "-Infinity", "tru", "nulls", "True", "[1] x", "[1]]", "{} {}",
        "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\ud800\"", "\"\\ud800\\u0041\"",
        "\"\\udc00\"", "\"\\u0000\"", "\"a\x01b\"", "\"tab\there\"", "\"\xff\"",
        "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\"",
        "{\"a\":1,\"a\":2}", "{\"x\":{\"k\":1,\"j\":2,\"k\":3}}", "1e999", "-1e999",
        "/*c*/1", "[1,\n2,]", "\"\\", "[\"\\u\"]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_invalid(bad[i], strlen(bad[i]));
    /* An embedded NUL byte is not whitespace. */
    expect_invalid("[1]\0", 4);
    expect_invalid("[\"a\0b\"]", 7);

    char digits[300];
    memset(digits, '7', sizeof digits);
    expect_invalid(digits, sizeof digits); /* longer than a number may be */

    /* Every proper prefix of a document is invalid. */
    static const char doc[] = "{\"k\": [1, -2.5e3, \"s\\u00e9\\n\", {\"x\": null}], \"t\": true}";
    kvtc_json_free(parse_ok(doc, sizeof doc - 1));
    for (size_t n = 0; n < sizeof doc - 1; n++)
        expect_invalid(doc, n);
}

static void test_depth(void)
{
    enum { DEEP = 100000 };
    static char text[2 * DEEP];
    for (int depth = KVTC_JSON_MAX_DEPTH; depth <= KVTC_JSON_MAX_DEPTH + 1; depth++) {
        memset(text, '[', (size_t)depth);
        memset(text + depth, ']', (size_t)depth);
        kvtc_json *doc = NULL;
        kvtc_status st = kvtc_json_parse(text, 2 * (size_t)depth, &doc, NULL);
        CHECK_MSG((st == KVTC_OK) == (depth <= KVTC_JSON_MAX_DEPTH), "depth %d: status %d",
                  depth, (int)st);
        kvtc_json_free(doc);
    }
    memset(text, '[', DEEP);
    memset(text + DEEP, ']', DEEP);
    expect_invalid(text, 2 * DEEP);
    for (int i = 0; i < DEEP; i++)
        memcpy(text + 2 * i, "{\"", 2);
    expect_invalid(text, 2 * DEEP);
}

/* Random byte changes to a valid document: any outcome but a crash or a leak. */
static void test_mutations(void)
{
    static const char base[] = "{\"__metadata__\":{\"pos0\":\"3\"},\"layers.0.key\":{\"dtype\":"
                               "\"F16\",\"shape\":[1,2,4],\"data_offsets\":[0,16]},\"x\":"
                               "[true,false,null,-1.5e2,\"\\u00e9\\ud83d\\ude00\"]}";
    static const char alphabet[] = "{}[]\":,\\u0123456789abcdefe.-+ \x80\xc3\xed\xff";
    test_rng rng;
    rng_seed(&rng, 42);
    char buf[sizeof base];
    int accepted = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, base, sizeof base);
        int edits = 1 + (int)rng_below(&rng, 4);
        for (int e = 0; e < edits; e++)
            buf[rng_below(&rng, sizeof base - 1)] = alphabet[rng_below(&rng, sizeof alphabet - 1)];
        size_t len = rng_below(&rng, 8) == 0 ? rng_below(&rng, sizeof base) : sizeof base - 1;
        kvtc_json *doc = NULL;
        if (kvtc_json_parse(buf, len, &doc, NULL) == KVTC_OK)
            accepted++;
        kvtc_json_free(doc);
    }
    CHECK(accepted > 0 && accepted < 20000);
}

static void test_numbers(void)
{
    uint64_t u;
    CHECK(kvtc_parse_u64("0", 1, &u) && u == 0);
    CHECK(kvtc_parse_u64("18446744073709551615", 20, &u) && u == UINT64_MAX);
    CHECK(!kvtc_parse_u64("18446744073709551616", 20, &u));
    static const char *const bad_u64[] = {"", "00", "01", "-1", "+1", "1.0", "1e3", " 1", "1 ", "x"};
    for (size_t i = 0; i < sizeof bad_u64 / sizeof bad_u64[0]; i++)
        CHECK_MSG(!kvtc_parse_u64(bad_u64[i], strlen(bad_u64[i]), &u), "u64 \"%s\"", bad_u64[i]);

    double d;
    CHECK(kvtc_parse_double("10000.0", 7, &d) && d == 10000.0);
    CHECK(kvtc_parse_double("1e4", 3, &d) && d == 10000.0);
    CHECK(kvtc_parse_double("-0.5", 4, &d) && d == -0.5);
    CHECK(kvtc_parse_double("0.1", 3, &d) && d == 0.1);
    CHECK(kvtc_parse_double("1e-400", 6, &d) && d == 0.0);
    CHECK(kvtc_parse_double("123456789012345678901234567890e-20", 34, &d) &&
          d == 1234567890.1234567890);
    CHECK(kvtc_parse_double("1.7976931348623157e308", 22, &d) && d == 1.7976931348623157e308);
    static const char *const bad_double[] = {"", " 1", "1 ", "inf", "nan", "+1", "1e400",
                                             "0x1p3", "1,5", "1.5f", "--1", "1e99999999999999"};
    for (size_t i = 0; i < sizeof bad_double / sizeof bad_double[0]; i++)
        CHECK_MSG(!kvtc_parse_double(bad_double[i], strlen(bad_double[i]), &d), "double \"%s\"",
                  bad_double[i]);

    char buf[KVTC_NUMBER_BUF];
    CHECK(strcmp(kvtc_format_double(0.1, buf), "0.1") == 0);
    CHECK(strcmp(kvtc_format_double(10000, buf), "10000") == 0);
    CHECK(strcmp(kvtc_format_double(1e300, buf), "1e+300") == 0);
    CHECK(strcmp(kvtc_format_double(-2.5e-7, buf), "-2.5e-07") == 0);
    CHECK(strcmp(kvtc_format_double(NAN, buf), "null") == 0);
    CHECK(strcmp(kvtc_format_double(-INFINITY, buf), "null") == 0);
    /* Every finite double reads back exactly. */
    test_rng rng;
    rng_seed(&rng, 7);
    int mismatches = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t bits = rng_u64(&rng);
        double v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v))
            continue;
        kvtc_format_double(v, buf);
        double back;
        if (!kvtc_parse_double(buf, strlen(buf), &back) || memcmp(&back, &v, sizeof v) != 0)
            mismatches++;
    }
    CHECK_EQ(mismatches, 0);

    /* A locale with a decimal comma changes neither reading nor writing. */
    static const char *const comma_locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8"};
    for (size_t i = 0; i < sizeof comma_locales / sizeof comma_locales[0]; i++) {
        if (!setlocale(LC_NUMERIC, comma_locales[i]))
            continue;
        CHECK(kvtc_parse_double("1.5", 3, &d) && d == 1.5);
        CHECK(strcmp(kvtc_format_double(0.25, buf), "0.25") == 0);
        setlocale(LC_NUMERIC, "C");
        break;
    }
}

static void test_writer(void)
{
    kvtc_writer w;
    kvtc_writer_init(&w);
    kvtc_json_writer jw;
    kvtc_jw_init(&jw, &w, false);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "s");
    kvtc_jw_string(&jw, "q\"b\\n\n\x01\xc3\xa9\xff");
    kvtc_jw_key(&jw, "list");
    kvtc_jw_begin_array(&jw);
    kvtc_jw_int(&jw, -3);
    kvtc_jw_uint(&jw, UINT64_MAX);
    kvtc_jw_double(&jw, 0.1);
    kvtc_jw_double(&jw, INFINITY);
    kvtc_jw_bool(&jw, true);
    kvtc_jw_null(&jw);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_end_object(&jw);
    kvtc_jw_begin_array(&jw);
    kvtc_jw_end_array(&jw);
    kvtc_jw_end_array(&jw);
    kvtc_jw_end_object(&jw);
    static const char want[] = "{\"s\":\"q\\\"b\\\\n\\n\\u0001\xc3\xa9\xef\xbf\xbd\",\"list\":"
                               "[-3,18446744073709551615,0.1,null,true,null,{},[]]}";
    CHECK(!w.failed && w.len == sizeof want - 1 && memcmp(w.buf, want, w.len) == 0);
    if (w.len != sizeof want - 1 || memcmp(w.buf, want, w.len) != 0)
        printf("  got %.*s\n", (int)w.len, (const char *)w.buf);
    kvtc_json_free(parse_ok((const char *)w.buf, w.len));
    kvtc_writer_free(&w);

    /* Pretty output is the same document. */
    kvtc_writer_init(&w);
    kvtc_jw_init(&jw, &w, true);
    kvtc_jw_begin_object(&jw);
    kvtc_jw_key(&jw, "a");
    kvtc_jw_begin_array(&jw);
    kvtc_jw_int(&jw, 1);
    kvtc_jw_int(&jw, 2);
    kvtc_jw_end_array(&jw);
    kvtc_jw_key(&jw, "b");
    kvtc_jw_begin_object(&jw);
    kvtc_jw_end_object(&jw);
    kvtc_jw_end_object(&jw);
    static const char pretty[] = "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}";
    CHECK(!w.failed && w.len == sizeof pretty - 1 && memcmp(w.buf, pretty, w.len) == 0);
    kvtc_writer_free(&w);
}

int main(void)
{
    test_valid();
    test_invalid();
    test_depth();
    test_mutations();
    test_numbers();
    test_writer();
    return test_summary("test_json");
}
