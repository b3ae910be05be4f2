/*
 * schema.h - validation of JSON values against the JSON Schema subset plugins declare.
 *
 * Supported keywords: type (one of object, array, string, integer, number, boolean, null, or
 * an array of them; "integer" accepts JSON integers only, "number" integers and reals),
 * properties, required, additionalProperties (boolean or schema), items (one schema for every
 * element), enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers),
 * minLength, maxLength (counted in UTF-8 characters), minItems, maxItems, and the annotations
 * description, title, default, examples, $schema (ignored when validating). Every other
 * keyword - pattern, $ref, oneOf, anyOf, allOf, not, format, ... - is refused by schema_check,
 * so an author learns at load time that a constraint would be ignored. Schemas and values
 * nested deeper than 64 levels are refused.
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
 * root_name names the value in messages ("input", "config"); paths read "input.items[2].name",
 * with odd keys quoted: input["a.b"]. The first violation is reported, in a fixed order: type,
 * const, enum, bounds; for objects required (listed order), properties (schema order), then
 * additional properties. Allocates nothing when the value is valid. A schema that
 * schema_check would refuse is not trusted: a malformed keyword it meets is AR_E_INVALID with
 * code "schema_invalid". */
int schema_validate(const json_t *schema, const json_t *value, const char *root_name, ar_error *err);

/* The JSON type of a value as schemas and messages name it: object, array, string, integer,
 * number, boolean, null. A static string. */
const char *schema_type_name(const json_t *v);

#endif
