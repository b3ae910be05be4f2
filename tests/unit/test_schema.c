/* test_schema.c - the JSON Schema subset: schema_check and schema_validate. */
#include "test_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schema.h"

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!v)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    return v;
}

/* schema_check of text: AR_OK, or the message compared with want_msg. */
static void check_schema(const char *schema_text, const char *want_msg)
{
    json_t *schema = parse(schema_text);
    ar_error err;
    ar_error_clear(&err);
    int rc = schema_check(schema, &err);
    if (!want_msg) {
        if (rc != AR_OK)
            fail_msg("schema %s refused: %s", schema_text, err.message);
    } else {
        assert_int_equal(rc, AR_E_INVALID);
        assert_string_equal(err.code, "schema_invalid");
        assert_string_equal(err.message, want_msg);
    }
    json_decref(schema);
}

/* schema_check must refuse, with a message starting with want_prefix. */
static void check_refused_prefix(const char *schema_text, const char *want_prefix)
{
    json_t *schema = parse(schema_text);
    ar_error err;
    ar_error_clear(&err);
    assert_int_equal(schema_check(schema, &err), AR_E_INVALID);
    assert_string_equal(err.code, "schema_invalid");
    if (strncmp(err.message, want_prefix, strlen(want_prefix)) != 0)
        fail_msg("message \"%s\" does not start with \"%s\"", err.message, want_prefix);
    json_decref(schema);
}

/* Validate value_text against schema_text (which must pass schema_check): NULL want_msg means
 * valid, otherwise the exact violation message. */
static void check_value(const char *schema_text, const char *value_text, const char *want_msg)
{
    json_t *schema = parse(schema_text), *value = parse(value_text);
    ar_error err;
    ar_error_clear(&err);
    if (schema_check(schema, &err) != AR_OK)
        fail_msg("schema %s refused: %s", schema_text, err.message);
    int rc = schema_validate(schema, value, "input", &err);
    if (!want_msg) {
        if (rc != AR_OK)
            fail_msg("%s against %s: %s", value_text, schema_text, err.message);
    } else {
        if (rc == AR_OK)
            fail_msg("%s against %s: accepted, wanted \"%s\"", value_text, schema_text, want_msg);
        assert_int_equal(rc, AR_E_INVALID);
        assert_string_equal(err.code, "schema_violation");
        assert_string_equal(err.message, want_msg);
    }
    json_decref(schema);
    json_decref(value);
}

static void type_keyword(void **state)
{
    (void)state;
    check_value("{\"type\":\"string\"}", "\"hi\"", NULL);
    check_value("{\"type\":\"string\"}", "3", "input: expected string, got integer");
    check_value("{\"type\":\"object\"}", "{}", NULL);
    check_value("{\"type\":\"object\"}", "[]", "input: expected object, got array");
    check_value("{\"type\":\"array\"}", "[1]", NULL);
    check_value("{\"type\":\"boolean\"}", "false", NULL);
    check_value("{\"type\":\"boolean\"}", "null", "input: expected boolean, got null");
    check_value("{\"type\":\"null\"}", "null", NULL);
    check_value("{\"type\":\"null\"}", "0", "input: expected null, got integer");
    check_value("{\"type\":[\"string\",\"null\"]}", "null", NULL);
    check_value("{\"type\":[\"string\",\"null\"]}", "\"x\"", NULL);
    check_value("{\"type\":[\"string\",\"null\"]}", "1.5", "input: expected string or null, got number");
    check_value("{\"type\":[\"string\",\"integer\",\"null\"]}", "true",
                 "input: expected string, integer or null, got boolean");
    check_value("{}", "[1, {\"a\": null}]", NULL);

    check_schema("{\"type\":\"float\"}", "/type: unknown type \"float\" (known: object, array, "
                 "string, integer, number, boolean, null)");
    check_schema("{\"type\":3}", "/type: must be a type name or a non-empty array of type names");
    check_schema("{\"type\":[]}", "/type: must be a type name or a non-empty array of type names");
    check_schema("{\"type\":[\"string\",\"float\"]}", "/type/1: unknown type \"float\"");
    check_schema("{\"type\":[\"string\",7]}", "/type/1: must be a type name, got integer");
    check_schema("{\"type\":[\"string\",\"string\"]}", "/type: type \"string\" is listed twice");
}

static void integer_versus_number(void **state)
{
    (void)state;
    check_value("{\"type\":\"integer\"}", "42", NULL);
    check_value("{\"type\":\"integer\"}", "-7", NULL);
    check_value("{\"type\":\"integer\"}", "4.5", "input: expected integer, got number");
    /* jansson keeps 1.0 a real: "integer" means a JSON integer literal. */
    check_value("{\"type\":\"integer\"}", "1.0", "input: expected integer, got number");
    check_value("{\"type\":\"integer\"}", "\"1\"", "input: expected integer, got string");
    check_value("{\"type\":\"number\"}", "42", NULL);
    check_value("{\"type\":\"number\"}", "4.5", NULL);
    check_value("{\"type\":\"number\"}", "true", "input: expected number, got boolean");
}

static void properties_and_required(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"object\",\"required\":[\"message\",\"count\"],"
                    "\"properties\":{\"message\":{\"type\":\"string\"},"
                    "\"count\":{\"type\":\"integer\"},\"note\":{\"type\":\"string\"}}}";
    check_value(s, "{\"message\":\"hi\",\"count\":2}", NULL);
    check_value(s, "{\"message\":\"hi\",\"count\":2,\"other\":[1]}", NULL);
    check_value(s, "{\"count\":2}", "input: missing required field \"message\"");
    /* required is checked before properties, in its listed order */
    check_value(s, "{\"message\":5}", "input: missing required field \"count\"");
    check_value(s, "{\"message\":5,\"count\":1}", "input.message: expected string, got integer");
    /* properties in schema order: message before count even when the value lists count first */
    check_value(s, "{\"count\":\"x\",\"message\":5}", "input.message: expected string, got integer");
    check_value(s, "{\"message\":\"a\",\"count\":1,\"note\":null}",
                 "input.note: expected string, got null");
    /* properties and required apply to objects only */
    check_value("{\"required\":[\"a\"],\"properties\":{\"a\":{\"type\":\"string\"}}}", "12", NULL);

    check_schema("{\"properties\":[]}", "/properties: must be an object of schemas, got array");
    check_schema("{\"properties\":{\"a\":\"string\"}}",
                 "/properties/a: a schema must be a JSON object, got string");
    check_schema("{\"properties\":{\"amount\":{\"type\":\"float\"}}}",
                 "/properties/amount/type: unknown type \"float\" (known: object, array, string, "
                 "integer, number, boolean, null)");
    check_schema("{\"required\":\"a\"}", "/required: must be an array of strings, got string");
    check_schema("{\"required\":[\"a\",1]}", "/required/1: must be a string, got integer");
    check_schema("{\"required\":[]}", NULL);
}

static void additional_properties(void **state)
{
    (void)state;
    const char *closed = "{\"properties\":{\"a\":{}},\"additionalProperties\":false}";
    check_value(closed, "{\"a\":1}", NULL);
    check_value(closed, "{\"a\":1,\"b\":2}",
                 "input: unexpected field \"b\" (additionalProperties is false)");
    const char *typed = "{\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"integer\"}}";
    check_value(typed, "{\"a\":\"x\",\"b\":2,\"c\":3}", NULL);
    check_value(typed, "{\"a\":\"x\",\"b\":2,\"c\":\"no\"}", "input.c: expected integer, got string");
    check_value("{\"additionalProperties\":true}", "{\"z\":1}", NULL);
    /* without properties every field is additional */
    check_value("{\"additionalProperties\":false}", "{}", NULL);
    check_value("{\"additionalProperties\":false}", "{\"z\":1}",
                 "input: unexpected field \"z\" (additionalProperties is false)");

    check_schema("{\"additionalProperties\":\"no\"}",
                 "/additionalProperties: must be a boolean or a schema, got string");
    check_schema("{\"additionalProperties\":{\"type\":\"x\"}}",
                 "/additionalProperties/type: unknown type \"x\" (known: object, array, string, "
                 "integer, number, boolean, null)");
}

static void items_and_array_lengths(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"array\",\"minItems\":1,\"maxItems\":3,\"items\":{\"type\":\"string\"}}";
    check_value(s, "[\"a\"]", NULL);
    check_value(s, "[\"a\",\"b\",\"c\"]", NULL);
    check_value(s, "[]", "input: must have at least 1 item(s), got 0");
    check_value(s, "[\"a\",\"b\",\"c\",\"d\"]", "input: must have at most 3 item(s), got 4");
    check_value(s, "[\"a\",\"b\",3]", "input[2]: expected string, got integer");

    check_schema("{\"items\":[{}]}", "/items: must be a schema (an object), got array (tuple "
                 "validation is not supported)");
    check_schema("{\"items\":{\"minItems\":-1}}", "/items/minItems: must be a non-negative "
                 "integer, got a negative integer");
    check_schema("{\"maxItems\":1.5}", "/maxItems: must be a non-negative integer, got number");
    check_schema("{\"minItems\":3,\"maxItems\":2}", "/minItems: is greater than maxItems");
}

static void enum_and_const(void **state)
{
    (void)state;
    const char *e = "{\"enum\":[\"open\",\"closed\",3,null,{\"a\":[1]}]}";
    check_value(e, "\"open\"", NULL);
    check_value(e, "3", NULL);
    check_value(e, "null", NULL);
    check_value(e, "{\"a\":[1]}", NULL);
    check_value(e, "{\"a\":[2]}", "input: must be one of [\"open\",\"closed\",3,null,{\"a\":[1]}]");
    check_value(e, "\"Open\"", "input: must be one of [\"open\",\"closed\",3,null,{\"a\":[1]}]");
    check_value("{\"const\":\"v1\"}", "\"v1\"", NULL);
    check_value("{\"const\":\"v1\"}", "\"v2\"", "input: must equal \"v1\"");
    check_value("{\"const\":{\"x\":1}}", "{\"x\":1}", NULL);

    check_schema("{\"enum\":[]}", "/enum: must be a non-empty array");
    check_schema("{\"enum\":\"a\"}", "/enum: must be a non-empty array");
    check_schema("{\"const\":[1,2]}", NULL);
}

static void numeric_bounds(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"number\",\"minimum\":0,\"maximum\":100}";
    check_value(s, "0", NULL);
    check_value(s, "100", NULL);
    check_value(s, "55.5", NULL);
    check_value(s, "-1", "input: must be >= 0, got -1");
    check_value(s, "100.5", "input: must be <= 100, got 100.5");
    const char *x = "{\"exclusiveMinimum\":0,\"exclusiveMaximum\":1.5}";
    check_value(x, "1", NULL);
    check_value(x, "0", "input: must be > 0, got 0");
    check_value(x, "1.5", "input: must be < 1.5, got 1.5");
    /* exact integer comparison beyond 2^53 */
    check_value("{\"maximum\":9007199254740993}", "9007199254740993", NULL);
    check_value("{\"maximum\":9007199254740992}", "9007199254740993",
                 "input: must be <= 9007199254740992, got 9007199254740993");
    /* bounds ignore non-numbers */
    check_value(s, "\"text\"", "input: expected number, got string");
    check_value("{\"minimum\":5}", "\"text\"", NULL);

    check_schema("{\"minimum\":\"0\"}", "/minimum: must be a number, got string");
    check_schema("{\"exclusiveMaximum\":true}", "/exclusiveMaximum: must be a number, got boolean");
    check_schema("{\"minimum\":5,\"maximum\":4}", "/minimum: is greater than maximum");
}

static void string_lengths_count_utf8_characters(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}";
    check_value(s, "\"ab\"", NULL);
    /* "héé": 3 characters, 5 bytes */
    check_value(s, "\"h\\u00e9\\u00e9\"", NULL);
    /* an emoji outside the BMP: 1 character, 4 bytes */
    check_value(s, "\"\\ud83d\\ude00\"", "input: must have at least 2 character(s), got 1");
    /* "ééé€": 4 characters, 9 bytes */
    check_value(s, "\"\\u00e9\\u00e9\\u00e9\\u20ac\"", "input: must have at most 3 character(s), got 4");
    check_value("{\"maxLength\":0}", "\"\"", NULL);

    check_schema("{\"minLength\":\"2\"}", "/minLength: must be a non-negative integer, got string");
    check_schema("{\"minLength\":4,\"maxLength\":3}", "/minLength: is greater than maxLength");
}

static void annotations_accepted(void **state)
{
    (void)state;
    check_schema("{\"$schema\":\"http://json-schema.org/draft-07/schema#\",\"title\":\"t\","
                 "\"description\":\"d\",\"default\":{\"a\":1},\"examples\":[1,\"x\"],"
                 "\"type\":\"object\"}", NULL);
    check_schema("{\"title\":1}", "/title: must be a string, got integer");
    check_schema("{\"description\":null}", "/description: must be a string, got null");
    check_schema("{\"examples\":{}}", "/examples: must be an array, got object");
    /* annotations do not constrain */
    check_value("{\"default\":5,\"examples\":[6],\"title\":\"n\"}", "\"str\"", NULL);
}

static void unsupported_keywords_refused(void **state)
{
    (void)state;
    const char *const keywords[] = { "pattern", "$ref", "oneOf", "anyOf", "allOf", "not",
                                     "format", "patternProperties", "if", "$id", "definitions" };
    for (size_t i = 0; i < sizeof keywords / sizeof keywords[0]; i++) {
        char schema[256], want[256];
        snprintf(schema, sizeof schema,
                 "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"%s\":\"x\"}}}",
                 keywords[i]);
        snprintf(want, sizeof want, "/properties/a/%s: unsupported keyword \"%s\"", keywords[i],
                 keywords[i]);
        check_refused_prefix(schema, want);
    }
    /* the pointer escapes '/' and '~' in property names */
    check_refused_prefix("{\"properties\":{\"a/b~c\":{\"format\":\"date\"}}}",
                        "/properties/a~1b~0c/format: unsupported keyword \"format\"");
    check_schema("{\"items\":{\"properties\":{\"x\":{\"items\":{\"type\":\"int\"}}}}}",
                 "/items/properties/x/items/type: unknown type \"int\" (known: object, array, "
                 "string, integer, number, boolean, null)");
}

static void root_must_be_object(void **state)
{
    (void)state;
    check_schema("true", "schema: a schema must be a JSON object, got boolean");
    check_schema("[]", "schema: a schema must be a JSON object, got array");
    ar_error err;
    assert_int_equal(schema_check(NULL, &err), AR_E_INVALID);
    assert_int_equal(schema_check(NULL, NULL), AR_E_INVALID);
}

/* {"items": {"items": ... {}}} nested n levels deep. */
static json_t *nested_items_schema(int levels)
{
    json_t *s = json_object();
    for (int i = 1; i < levels; i++) {
        json_t *outer = json_object();
        json_object_set_new(outer, "items", s);
        s = outer;
    }
    return s;
}

static json_t *nested_array(int levels)
{
    json_t *v = json_string("leaf");
    for (int i = 0; i < levels; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, v);
        v = outer;
    }
    return v;
}

static void deep_schema_nesting_capped(void **state)
{
    (void)state;
    ar_error err;
    json_t *ok = nested_items_schema(64);
    assert_int_equal(schema_check(ok, &err), AR_OK);
    json_decref(ok);

    json_t *deep = nested_items_schema(65);
    ar_error_clear(&err);
    assert_int_equal(schema_check(deep, &err), AR_E_INVALID);
    assert_string_equal(err.code, "schema_invalid");
    assert_non_null(strstr(err.message, "schema nested deeper than 64 levels"));
    assert_int_equal(strncmp(err.message, "/items/items/", 13), 0);
    json_decref(deep);

    /* far deeper than the path buffer: the pointer is cut, not overflowed */
    json_t *very = nested_items_schema(5000);
    assert_int_equal(schema_check(very, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "..."));
    json_decref(very);
}

static void deep_value_nesting_capped(void **state)
{
    (void)state;
    ar_error err;
    /* validate refuses to recurse past 64 levels even for a schema nobody checked */
    json_t *schema = nested_items_schema(200);
    json_t *value = nested_array(200);
    ar_error_clear(&err);
    assert_int_equal(schema_validate(schema, value, "input", &err), AR_E_INVALID);
    assert_string_equal(err.code, "schema_violation");
    assert_non_null(strstr(err.message, "nested deeper than 64 levels"));
    assert_int_equal(strncmp(err.message, "input[0][0][0]", 14), 0);
    json_decref(schema);
    json_decref(value);

    /* within the cap a deep value is fine */
    schema = nested_items_schema(64);
    value = nested_array(63);
    assert_int_equal(schema_validate(schema, value, "input", &err), AR_OK);
    json_decref(schema);
    json_decref(value);
}

static void nested_paths_in_messages(void **state)
{
    (void)state;
    const char *s =
        "{\"type\":\"object\",\"properties\":{\"order\":{\"type\":\"object\",\"required\":[\"lines\"],"
        "\"properties\":{\"lines\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
        "\"required\":[\"sku\"],\"properties\":{\"sku\":{\"type\":\"string\",\"minLength\":1},"
        "\"qty\":{\"type\":\"integer\",\"minimum\":1}}}}}}}}";
    check_value(s, "{\"order\":{\"lines\":[{\"sku\":\"a\",\"qty\":1}]}}", NULL);
    check_value(s, "{\"order\":{}}", "input.order: missing required field \"lines\"");
    check_value(s, "{\"order\":{\"lines\":[{\"sku\":\"a\"},{\"sku\":\"b\",\"qty\":0}]}}",
                 "input.order.lines[1].qty: must be >= 1, got 0");
    check_value(s, "{\"order\":{\"lines\":[{\"sku\":\"a\"},{\"sku\":\"\"}]}}",
                 "input.order.lines[1].sku: must have at least 1 character(s), got 0");
    check_value(s, "{\"order\":{\"lines\":[{},{}]}}",
                 "input.order.lines[0]: missing required field \"sku\"");
    check_value(s, "{\"order\":{\"lines\":{}}}", "input.order.lines: expected array, got object");
}

static void odd_property_names_quoted_in_path(void **state)
{
    (void)state;
    const char *s = "{\"properties\":{\"a.b\":{\"type\":\"string\"},\"say \\\"hi\\\"\":{\"type\":\"string\"},"
                    "\"ok_name1\":{\"properties\":{\"9lives\":{\"type\":\"null\"}}}}}";
    check_value(s, "{\"a.b\":1}", "input[\"a.b\"]: expected string, got integer");
    check_value(s, "{\"say \\\"hi\\\"\":1}", "input[\"say \\\"hi\\\"\"]: expected string, got integer");
    check_value(s, "{\"ok_name1\":{\"9lives\":1}}", "input.ok_name1[\"9lives\"]: expected null, got integer");
    check_value("{\"required\":[\"a\\\"b\"]}", "{}", "input: missing required field \"a\\\"b\"");
}

static void root_name_and_null_arguments(void **state)
{
    (void)state;
    json_t *schema = parse("{\"type\":\"string\"}"), *value = parse("1");
    ar_error err;
    assert_int_equal(schema_validate(schema, value, "config", &err), AR_E_INVALID);
    assert_string_equal(err.message, "config: expected string, got integer");
    assert_int_equal(schema_validate(schema, value, NULL, &err), AR_E_INVALID);
    assert_string_equal(err.message, "value: expected string, got integer");
    /* a NULL error is allowed */
    assert_int_equal(schema_validate(schema, value, "input", NULL), AR_E_INVALID);
    assert_int_equal(schema_validate(schema, NULL, "input", &err), AR_E_INVALID);
    assert_int_equal(schema_validate(NULL, value, "input", &err), AR_E_INVALID);
    assert_string_equal(err.code, "schema_invalid");
    json_decref(schema);
    json_decref(value);
}

static void malformed_schema_fails_closed(void **state)
{
    (void)state;
    /* schema_validate does not trust a schema nobody checked */
    json_t *schema = parse("{\"properties\":{\"a\":{\"minimum\":\"5\"}}}"), *value = parse("{\"a\":1}");
    ar_error err;
    assert_int_equal(schema_validate(schema, value, "input", &err), AR_E_INVALID);
    assert_string_equal(err.code, "schema_invalid");
    assert_non_null(strstr(err.message, "input.a"));
    assert_non_null(strstr(err.message, "minimum"));
    json_decref(schema);
    json_decref(value);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(type_keyword),
    cmocka_unit_test(integer_versus_number),
    cmocka_unit_test(properties_and_required),
    cmocka_unit_test(additional_properties),
    cmocka_unit_test(items_and_array_lengths),
    cmocka_unit_test(enum_and_const),
    cmocka_unit_test(numeric_bounds),
    cmocka_unit_test(string_lengths_count_utf8_characters),
    cmocka_unit_test(annotations_accepted),
    cmocka_unit_test(unsupported_keywords_refused),
    cmocka_unit_test(root_must_be_object),
    cmocka_unit_test(deep_schema_nesting_capped),
    cmocka_unit_test(deep_value_nesting_capped),
    cmocka_unit_test(nested_paths_in_messages),
    cmocka_unit_test(odd_property_names_quoted_in_path),
    cmocka_unit_test(root_name_and_null_arguments),
    cmocka_unit_test(malformed_schema_fails_closed),
};

AR_TEST_MAIN(tests, NULL, NULL)
