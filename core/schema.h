/*
 * schema.h - validation of JSON values against the JSON Schema subset plugins declare.
 *
 * Supported keywords: type (string or array of: object, array, string, integer, number,
 * boolean, null), properties, required, additionalProperties (boolean or schema), items,
 * enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, maxLength
 * (in UTF-8 characters), pattern is NOT supported, minItems, maxItems, description, title,
 * default, examples, $schema (ignored). Unknown keywords are refused by schema_check so an
 * author learns at load time that a constraint would be ignored.
 */
#ifndef SCHEMA_H
#define SCHEMA_H

#include <jansson.h>
#include "ar.h"

/* Check that schema (borrowed) is an object using only supported keywords with valid values.
 * AR_OK or AR_E_INVALID with code "schema_invalid" and the JSON pointer of the bad part. */
int schema_check(const json_t *schema, ar_error *err);

/* Validate value against schema (both borrowed). AR_OK, or AR_E_INVALID with code
 * "schema_violation" and a message such as "input.amount: expected number, got string".
 * root_name names the value in messages ("input", "config"). */
int schema_validate(const json_t *schema, const json_t *value, const char *root_name, ar_error *err);

#endif
