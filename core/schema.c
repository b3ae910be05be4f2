/* schema.c - the JSON Schema subset plugins declare (see schema.h).
 *
 * schema_check runs once, when a plugin is loaded; schema_validate runs on every action, so it
 * allocates nothing on success: the path of the value being checked lives in a fixed buffer
 * on the stack, and error text is only formatted once a violation is found. */
#include "schema.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonw.h"

/* Deeper schemas are refused, deeper values are a violation: bounds the recursion. */
#define SCHEMA_MAX_DEPTH 64

/* Room for a path; a longer one is cut and ends in "...". */
#define PATH_CAP 384

static const char *const type_names[] = {
    "object", "array", "string", "integer", "number", "boolean", "null"
};

/* ---- small text helpers ------------------------------------------------------------------ */

/* A bounded string builder: appends never overflow; a cut text ends in "...". */
typedef struct textbuf {
    char *buf;
    size_t cap;        /* bytes of buf, including the terminating NUL */
    size_t len;
    bool cut;
} textbuf;

static void tb_init(textbuf *tb, char *buf, size_t cap)
{
    tb->buf = buf;
    tb->cap = cap;
    tb->len = 0;
    tb->cut = false;
    buf[0] = '\0';
}

static void tb_putn(textbuf *tb, const char *s, size_t n)
{
    if (tb->cut)
        return;
    /* Keep 4 bytes for "..." and the NUL so a cut can always be marked. */
    if (tb->len + n + 4 > tb->cap) {
        memcpy(tb->buf + tb->len, "...", 4);
        tb->len += 3;
        tb->cut = true;
        return;
    }
    memcpy(tb->buf + tb->len, s, n);
    tb->len += n;
    tb->buf[tb->len] = '\0';
}

static void tb_puts(textbuf *tb, const char *s) { tb_putn(tb, s, strlen(s)); }

/* Append s as a JSON string literal (quotes, backslashes and control characters escaped). */
static void tb_put_quoted(textbuf *tb, const char *s)
{
    tb_puts(tb, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p && !tb->cut; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            tb_putn(tb, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            tb_puts(tb, esc);
        } else {
            tb_putn(tb, (const char *)p, 1);
        }
    }
    tb_puts(tb, "\"");
}

/* Append s as one JSON pointer token: '~' is "~0", '/' is "~1". */
static void tb_put_pointer_token(textbuf *tb, const char *s)
{
    tb_puts(tb, "/");
    for (const char *p = s; *p && !tb->cut; p++) {
        if (*p == '~')
            tb_puts(tb, "~0");
        else if (*p == '/')
            tb_puts(tb, "~1");
        else
            tb_putn(tb, p, 1);
    }
}

/* A saved end of a textbuf, to drop what was appended after it. */
typedef struct tb_mark {
    size_t len;
    bool cut;
} tb_mark;

static tb_mark tb_save(const textbuf *tb) { return (tb_mark){ tb->len, tb->cut }; }

static void tb_restore(textbuf *tb, tb_mark m)
{
    tb->len = m.len;
    tb->cut = m.cut;
    tb->buf[tb->len] = '\0';
}

const char *schema_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

static bool is_type_name(const char *s)
{
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
        if (strcmp(s, type_names[i]) == 0)
            return true;
    return false;
}

static void format_number(char *out, size_t cap, const json_t *n)
{
    if (json_is_integer(n))
        snprintf(out, cap, "%lld", (long long)json_integer_value(n));
    else
        snprintf(out, cap, "%.17g", json_real_value(n));
}

/* Compare two JSON numbers: <0, 0, >0. Integers are compared exactly (no rounding through
 * double for values beyond 2^53). */
static int compare_numbers(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return (x > y) - (x < y);
    }
    double x = json_number_value(a), y = json_number_value(b);
    return (x > y) - (x < y);
}

/* Number of code points of a UTF-8 string (jansson guarantees valid UTF-8). */
static size_t utf8_length(const char *s, size_t bytes)
{
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    return n;
}

/* ---- schema_check ------------------------------------------------------------------------ */

typedef struct check_ctx {
    textbuf ptr;       /* JSON pointer of the schema node being checked */
    ar_error *err;
} check_ctx;

static int check_fail(check_ctx *c, const char *keyword, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report a problem at the current pointer (plus keyword, when given). */
static int check_fail(check_ctx *c, const char *keyword, const char *fmt, ...)
{
    char detail[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    tb_mark m = tb_save(&c->ptr);
    if (keyword)
        tb_put_pointer_token(&c->ptr, keyword);
    const char *where = c->ptr.len ? c->ptr.buf : "schema";
    int rc = ar_error_set(c->err, AR_E_INVALID, "schema_invalid", "%s: %s", where, detail);
    tb_restore(&c->ptr, m);
    return rc;
}

static int check_node(check_ctx *c, const json_t *schema, int depth);

/* Check a sub-schema found under keyword (and key, for properties). */
static int check_child(check_ctx *c, const json_t *schema, int depth,
                       const char *keyword, const char *key)
{
    tb_mark m = tb_save(&c->ptr);
    tb_put_pointer_token(&c->ptr, keyword);
    if (key)
        tb_put_pointer_token(&c->ptr, key);
    int rc = check_node(c, schema, depth + 1);
    tb_restore(&c->ptr, m);
    return rc;
}

static int check_type(check_ctx *c, const json_t *type)
{
    if (json_is_string(type)) {
        if (!is_type_name(json_string_value(type)))
            return check_fail(c, "type", "unknown type \"%s\" (known: object, array, string, "
                              "integer, number, boolean, null)", json_string_value(type));
        return AR_OK;
    }
    if (!json_is_array(type) || json_array_size(type) == 0)
        return check_fail(c, "type", "must be a type name or a non-empty array of type names");
    size_t i;
    const json_t *t;
    json_array_foreach(type, i, t) {
        if (!json_is_string(t) || !is_type_name(json_string_value(t))) {
            char idx[24];
            snprintf(idx, sizeof idx, "%zu", i);
            tb_mark m = tb_save(&c->ptr);
            tb_put_pointer_token(&c->ptr, "type");
            int rc = json_is_string(t)
                ? check_fail(c, idx, "unknown type \"%s\"", json_string_value(t))
                : check_fail(c, idx, "must be a type name, got %s", schema_type_name(t));
            tb_restore(&c->ptr, m);
            return rc;
        }
        for (size_t j = 0; j < i; j++)
            if (json_equal(json_array_get(type, j), t))
                return check_fail(c, "type", "type \"%s\" is listed twice", json_string_value(t));
    }
    return AR_OK;
}

static int check_count(check_ctx *c, const char *keyword, const json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return check_fail(c, keyword, "must be a non-negative integer, got %s",
                          json_is_integer(v) ? "a negative integer" : schema_type_name(v));
    return AR_OK;
}

/* minX must not exceed maxX when both are present. */
static int check_order(check_ctx *c, const json_t *schema, const char *lo, const char *hi)
{
    const json_t *a = json_object_get(schema, lo), *b = json_object_get(schema, hi);
    if (a && b && json_is_number(a) && json_is_number(b) && compare_numbers(a, b) > 0)
        return check_fail(c, lo, "is greater than %s", hi);
    return AR_OK;
}

static int check_node(check_ctx *c, const json_t *schema, int depth)
{
    if (depth > SCHEMA_MAX_DEPTH)
        return check_fail(c, NULL, "schema nested deeper than %d levels", SCHEMA_MAX_DEPTH);
    if (!json_is_object(schema))
        return check_fail(c, NULL, "a schema must be a JSON object, got %s", schema_type_name(schema));

    const char *key;
    const json_t *v;
    int rc;
    json_object_foreach((json_t *)schema, key, v) {
        if (strcmp(key, "type") == 0) {
            if ((rc = check_type(c, v)) != AR_OK)
                return rc;
        } else if (strcmp(key, "properties") == 0) {
            if (!json_is_object(v))
                return check_fail(c, key, "must be an object of schemas, got %s", schema_type_name(v));
            const char *name;
            const json_t *sub;
            json_object_foreach((json_t *)v, name, sub)
                if ((rc = check_child(c, sub, depth, key, name)) != AR_OK)
                    return rc;
        } else if (strcmp(key, "required") == 0) {
            if (!json_is_array(v))
                return check_fail(c, key, "must be an array of strings, got %s", schema_type_name(v));
            size_t i;
            const json_t *s;
            json_array_foreach(v, i, s) {
                if (!json_is_string(s)) {
                    char idx[24];
                    snprintf(idx, sizeof idx, "%zu", i);
                    tb_mark m = tb_save(&c->ptr);
                    tb_put_pointer_token(&c->ptr, key);
                    rc = check_fail(c, idx, "must be a string, got %s", schema_type_name(s));
                    tb_restore(&c->ptr, m);
                    return rc;
                }
            }
        } else if (strcmp(key, "additionalProperties") == 0) {
            if (json_is_boolean(v))
                continue;
            if (!json_is_object(v))
                return check_fail(c, key, "must be a boolean or a schema, got %s", schema_type_name(v));
            if ((rc = check_child(c, v, depth, key, NULL)) != AR_OK)
                return rc;
        } else if (strcmp(key, "items") == 0) {
            if (!json_is_object(v))
                return check_fail(c, key, "must be a schema (an object), got %s "
                                  "(tuple validation is not supported)", schema_type_name(v));
            if ((rc = check_child(c, v, depth, key, NULL)) != AR_OK)
                return rc;
        } else if (strcmp(key, "enum") == 0) {
            if (!json_is_array(v) || json_array_size(v) == 0)
                return check_fail(c, key, "must be a non-empty array");
        } else if (strcmp(key, "minimum") == 0 || strcmp(key, "maximum") == 0 ||
                   strcmp(key, "exclusiveMinimum") == 0 || strcmp(key, "exclusiveMaximum") == 0) {
            if (!json_is_number(v))
                return check_fail(c, key, "must be a number, got %s", schema_type_name(v));
        } else if (strcmp(key, "minLength") == 0 || strcmp(key, "maxLength") == 0 ||
                   strcmp(key, "minItems") == 0 || strcmp(key, "maxItems") == 0) {
            if ((rc = check_count(c, key, v)) != AR_OK)
                return rc;
        } else if (strcmp(key, "description") == 0 || strcmp(key, "title") == 0 ||
                   strcmp(key, "$schema") == 0) {
            if (!json_is_string(v))
                return check_fail(c, key, "must be a string, got %s", schema_type_name(v));
        } else if (strcmp(key, "examples") == 0) {
            if (!json_is_array(v))
                return check_fail(c, key, "must be an array, got %s", schema_type_name(v));
        } else if (strcmp(key, "const") == 0 || strcmp(key, "default") == 0) {
            /* any value */
        } else {
            return check_fail(c, key, "unsupported keyword \"%s\" (it would be ignored, so it is "
                              "refused; see schema.h for the supported subset)", key);
        }
    }
    if ((rc = check_order(c, schema, "minLength", "maxLength")) != AR_OK ||
        (rc = check_order(c, schema, "minItems", "maxItems")) != AR_OK ||
        (rc = check_order(c, schema, "minimum", "maximum")) != AR_OK)
        return rc;
    return AR_OK;
}

int schema_check(const json_t *schema, ar_error *err)
{
    char buf[PATH_CAP];
    check_ctx c = { .err = err };
    tb_init(&c.ptr, buf, sizeof buf);
    if (!schema)
        return ar_error_set(err, AR_E_INVALID, "schema_invalid", "schema: missing");
    return check_node(&c, schema, 1);
}

/* ---- schema_validate --------------------------------------------------------------------- */

typedef struct validate_ctx {
    textbuf path;      /* "input.items[2].name" */
    ar_error *err;
} validate_ctx;

static int violation(validate_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int violation(validate_ctx *c, const char *fmt, ...)
{
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return ar_error_set(c->err, AR_E_INVALID, "schema_violation", "%s: %s", c->path.buf, detail);
}

/* A schema that schema_check would have refused: fail closed rather than skip the rule. */
static int malformed(validate_ctx *c, const char *keyword)
{
    return ar_error_set(c->err, AR_E_INVALID, "schema_invalid",
                        "%s: the schema's \"%s\" is malformed (schema_check refuses it)",
                        c->path.buf, keyword);
}

static bool is_identifier(const char *s)
{
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
        return false;
    for (s++; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

/* ".name" for plain names, ["odd name"] for anything else. */
static void path_put_key(textbuf *tb, const char *key)
{
    if (is_identifier(key)) {
        tb_puts(tb, ".");
        tb_puts(tb, key);
    } else {
        tb_puts(tb, "[");
        tb_put_quoted(tb, key);
        tb_puts(tb, "]");
    }
}

static bool type_matches(const char *type, const json_t *v)
{
    switch (type[0]) {
    case 'o': return strcmp(type, "object") == 0 && json_is_object(v);
    case 'a': return strcmp(type, "array") == 0 && json_is_array(v);
    case 's': return strcmp(type, "string") == 0 && json_is_string(v);
    case 'i': return strcmp(type, "integer") == 0 && json_is_integer(v);
    case 'n':
        if (strcmp(type, "number") == 0)
            return json_is_number(v);
        return strcmp(type, "null") == 0 && json_is_null(v);
    case 'b': return strcmp(type, "boolean") == 0 && json_is_boolean(v);
    }
    return false;
}

static int validate_type(validate_ctx *c, const json_t *type, const json_t *v)
{
    if (json_is_string(type)) {
        if (type_matches(json_string_value(type), v))
            return AR_OK;
        return violation(c, "expected %s, got %s", json_string_value(type), schema_type_name(v));
    }
    if (!json_is_array(type))
        return malformed(c, "type");
    size_t i;
    const json_t *t;
    json_array_foreach(type, i, t) {
        if (!json_is_string(t))
            return malformed(c, "type");
        if (type_matches(json_string_value(t), v))
            return AR_OK;
    }
    char list[256];
    textbuf tb;
    tb_init(&tb, list, sizeof list);
    json_array_foreach(type, i, t) {
        if (i > 0)
            tb_puts(&tb, i + 1 == json_array_size(type) ? " or " : ", ");
        tb_puts(&tb, json_string_value(t));
    }
    return violation(c, "expected %s, got %s", list, schema_type_name(v));
}

/* Compact JSON text of v for a message (failure path only, so it may allocate). */
static void dump_value(char *out, size_t cap, const json_t *v)
{
    char *s = jsonw_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    textbuf tb;
    tb_init(&tb, out, cap);
    tb_puts(&tb, s ? s : "(value)");
    free(s);
}

static int validate_enum(validate_ctx *c, const json_t *allowed, const json_t *v)
{
    if (!json_is_array(allowed))
        return malformed(c, "enum");
    size_t i;
    const json_t *a;
    json_array_foreach(allowed, i, a)
        if (json_equal(a, v))
            return AR_OK;
    char list[256];
    dump_value(list, sizeof list, allowed);
    return violation(c, "must be one of %s", list);
}

static int validate_number(validate_ctx *c, const json_t *schema, const json_t *v)
{
    static const struct {
        const char *keyword;
        int fails_if;      /* comparison result (value vs bound) that is a violation */
        bool or_equal;     /* equality is a violation too */
        const char *text;
    } bounds[] = {
        { "minimum", -1, false, ">=" },
        { "maximum", 1, false, "<=" },
        { "exclusiveMinimum", -1, true, ">" },
        { "exclusiveMaximum", 1, true, "<" },
    };
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        const json_t *b = json_object_get(schema, bounds[i].keyword);
        if (!b)
            continue;
        if (!json_is_number(b))
            return malformed(c, bounds[i].keyword);
        int cmp = compare_numbers(v, b);
        if (cmp == bounds[i].fails_if || (bounds[i].or_equal && cmp == 0)) {
            char bound[48], got[48];
            format_number(bound, sizeof bound, b);
            format_number(got, sizeof got, v);
            return violation(c, "must be %s %s, got %s", bounds[i].text, bound, got);
        }
    }
    return AR_OK;
}

/* minLength/maxLength or minItems/maxItems against a measured size. */
static int validate_size(validate_ctx *c, const json_t *schema, size_t size, const char *min_kw,
                         const char *max_kw, const char *unit)
{
    const json_t *lo = json_object_get(schema, min_kw), *hi = json_object_get(schema, max_kw);
    if (lo) {
        if (!json_is_integer(lo) || json_integer_value(lo) < 0)
            return malformed(c, min_kw);
        if (size < (unsigned long long)json_integer_value(lo))
            return violation(c, "must have at least %lld %s, got %zu",
                             (long long)json_integer_value(lo), unit, size);
    }
    if (hi) {
        if (!json_is_integer(hi) || json_integer_value(hi) < 0)
            return malformed(c, max_kw);
        if (size > (unsigned long long)json_integer_value(hi))
            return violation(c, "must have at most %lld %s, got %zu",
                             (long long)json_integer_value(hi), unit, size);
    }
    return AR_OK;
}

static int validate_node(validate_ctx *c, const json_t *schema, const json_t *v, int depth);

static int validate_child(validate_ctx *c, const json_t *schema, const json_t *v, int depth,
                          const char *key, size_t index)
{
    tb_mark m = tb_save(&c->path);
    if (key) {
        path_put_key(&c->path, key);
    } else {
        char idx[32];
        snprintf(idx, sizeof idx, "[%zu]", index);
        tb_puts(&c->path, idx);
    }
    int rc = validate_node(c, schema, v, depth + 1);
    tb_restore(&c->path, m);
    return rc;
}

static int validate_object(validate_ctx *c, const json_t *schema, const json_t *v, int depth)
{
    const json_t *required = json_object_get(schema, "required");
    const json_t *props = json_object_get(schema, "properties");
    const json_t *extra = json_object_get(schema, "additionalProperties");
    int rc;

    if (required) {
        if (!json_is_array(required))
            return malformed(c, "required");
        size_t i;
        const json_t *name;
        json_array_foreach(required, i, name) {
            if (!json_is_string(name))
                return malformed(c, "required");
            if (!json_object_get(v, json_string_value(name))) {
                char quoted[200];
                textbuf tb;
                tb_init(&tb, quoted, sizeof quoted);
                tb_put_quoted(&tb, json_string_value(name));
                return violation(c, "missing required field %s", quoted);
            }
        }
    }
    if (props) {
        if (!json_is_object(props))
            return malformed(c, "properties");
        const char *key;
        const json_t *sub;
        json_object_foreach((json_t *)props, key, sub) {
            const json_t *field = json_object_get(v, key);
            if (field && (rc = validate_child(c, sub, field, depth, key, 0)) != AR_OK)
                return rc;
        }
    }
    if (extra && !json_is_true(extra)) {
        if (!json_is_false(extra) && !json_is_object(extra))
            return malformed(c, "additionalProperties");
        const char *key;
        const json_t *field;
        json_object_foreach((json_t *)v, key, field) {
            if (props && json_object_get(props, key))
                continue;
            if (json_is_false(extra)) {
                char quoted[200];
                textbuf tb;
                tb_init(&tb, quoted, sizeof quoted);
                tb_put_quoted(&tb, key);
                return violation(c, "unexpected field %s (additionalProperties is false)", quoted);
            }
            if ((rc = validate_child(c, extra, field, depth, key, 0)) != AR_OK)
                return rc;
        }
    }
    return AR_OK;
}

static int validate_node(validate_ctx *c, const json_t *schema, const json_t *v, int depth)
{
    if (depth > SCHEMA_MAX_DEPTH)
        return violation(c, "nested deeper than %d levels", SCHEMA_MAX_DEPTH);
    if (!json_is_object(schema))
        return ar_error_set(c->err, AR_E_INVALID, "schema_invalid",
                            "%s: the schema is not an object (schema_check refuses it)",
                            c->path.buf);
    const json_t *kw;
    int rc;

    if ((kw = json_object_get(schema, "type")) && (rc = validate_type(c, kw, v)) != AR_OK)
        return rc;
    if ((kw = json_object_get(schema, "const")) && !json_equal(kw, v)) {
        char want[256];
        dump_value(want, sizeof want, kw);
        return violation(c, "must equal %s", want);
    }
    if ((kw = json_object_get(schema, "enum")) && (rc = validate_enum(c, kw, v)) != AR_OK)
        return rc;

    switch (json_typeof(v)) {
    case JSON_INTEGER:
    case JSON_REAL:
        return validate_number(c, schema, v);
    case JSON_STRING:
        return validate_size(c, schema,
                             utf8_length(json_string_value(v), json_string_length(v)),
                             "minLength", "maxLength", "character(s)");
    case JSON_ARRAY: {
        if ((rc = validate_size(c, schema, json_array_size(v), "minItems", "maxItems",
                                "item(s)")) != AR_OK)
            return rc;
        const json_t *items = json_object_get(schema, "items");
        if (!items)
            return AR_OK;
        size_t i;
        const json_t *elem;
        json_array_foreach(v, i, elem)
            if ((rc = validate_child(c, items, elem, depth, NULL, i)) != AR_OK)
                return rc;
        return AR_OK;
    }
    case JSON_OBJECT:
        return validate_object(c, schema, v, depth);
    default:
        return AR_OK;
    }
}

int schema_validate(const json_t *schema, const json_t *value, const char *root_name, ar_error *err)
{
    char buf[PATH_CAP];
    validate_ctx c = { .err = err };
    tb_init(&c.path, buf, sizeof buf);
    tb_puts(&c.path, root_name && *root_name ? root_name : "value");
    if (!schema)
        return ar_error_set(err, AR_E_INVALID, "schema_invalid", "%s: no schema", buf);
    if (!value)
        return violation(&c, "missing");
    return validate_node(&c, schema, value, 1);
}
