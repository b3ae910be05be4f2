/* api_secrets.c - the API's vault routes (operator): list secret names, set and remove a
 * connector's secret (its processes are then replaced to pick it up), rotate the master key.
 * Values come in, never go out: no route returns, logs or audits a value, and the request body
 * that carried one is wiped. */
#include "api_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "vault.h"

static int have_vault(api_server *a, request *rq)
{
    if (a->vault)
        return 1;
    api_set_reply_error(rq, 503, "vault_unavailable", "this daemon has no vault");
    return 0;
}

/* "connector/name" from the route into its two parts; the connector must be configured. */
static int split_target(api_server *a, request *rq, const char *param, char *connector, size_t cap,
                        const char **name)
{
    const char *slash = strchr(param, '/');
    if (!slash || (size_t)(slash - param) >= cap) {
        api_set_reply_error(rq, 404, "not_found", "expected /v1/secrets/CONNECTOR/NAME");
        return 0;
    }
    memcpy(connector, param, (size_t)(slash - param));
    connector[slash - param] = '\0';
    *name = slash + 1;
    if (!config_find_connector(a->cfg, connector)) {
        api_set_reply_error(rq, 404, "unknown_connector", "no connector named \"%s\" in the config", connector);
        return 0;
    }
    return 1;
}

/* A connector's processes hold the old value until they restart. */
static void pick_up(api_server *a, const char *connector)
{
    if (a->sched && scheduler_restart_connector(a->sched, connector) != AR_OK)
        ar_log("warn", "connector %s: cannot restart its processes; a changed secret applies from their "
               "next restart", connector);
}

void api_route_list_secrets(api_server *a, request *rq)
{
    if (!have_vault(a, rq))
        return;
    const char *connector = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "connector");
    json_t *list = NULL;
    ar_error err = {0};
    int rc = vault_list(a->vault, connector && *connector ? connector : NULL, &list, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    json_t *out = json_array();
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s) {
        json_array_append_new(out, json_pack("{s:O, s:O, s:O, s:o, s:o}", "connector", json_object_get(s, "connector"),
                                             "name", json_object_get(s, "name"), "version", json_object_get(s, "version"),
                                             "created_at", action_time_json(json_object_get(s, "created_ms")),
                                             "updated_at", action_time_json(json_object_get(s, "updated_ms"))));
    }
    json_decref(list);
    api_set_reply_json(rq, 200, json_pack("{s:o}", "secrets", out));
}

/* Wipe a parsed body's string values (the secret) before it is freed. */
static void wipe_json_strings(json_t *body)
{
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) {
        if (json_is_string(v))
            sodium_memzero((char *)json_string_value(v), json_string_length(v));
    }
}

void api_route_set_secret(api_server *a, request *rq, const char *param)
{
    char connector[80];
    const char *name;
    if (!have_vault(a, rq) || !split_target(a, rq, param, connector, sizeof connector, &name))
        return;
    json_error_t jerr;
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    const json_t *value = json_object_get(body, "value");
    if (!body) {
        api_set_reply_error(rq, 400, "invalid_json", "request body is not valid JSON: %s", jerr.text);
        return;
    }
    if (!json_is_object(body) || !json_is_string(value) || json_object_size(body) != 1) {
        wipe_json_strings(body);
        json_decref(body);
        api_set_reply_error(rq, 400, "invalid_request", "expected {\"value\": string}");
        return;
    }
    uint32_t version = 0;
    ar_error err = {0};
    int rc = vault_set_by(a->vault, rq->who.name, connector, name, json_string_value(value), json_string_length(value),
                          &version, &err);
    wipe_json_strings(body);
    json_decref(body);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    ar_log("info", "secret %s/%s set by %s (version %u)", connector, name, rq->who.name, version);
    pick_up(a, connector);
    api_set_reply_json(rq, 200, json_pack("{s:s, s:s, s:i}", "connector", connector, "name", name, "version",
                                          (int)version));
}

void api_route_remove_secret(api_server *a, request *rq, const char *param)
{
    char connector[80];
    const char *name;
    if (!have_vault(a, rq) || !split_target(a, rq, param, connector, sizeof connector, &name))
        return;
    ar_error err = {0};
    int rc = vault_remove_by(a->vault, rq->who.name, connector, name, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    ar_log("info", "secret %s/%s removed by %s", connector, name, rq->who.name);
    pick_up(a, connector);
    api_set_reply_json(rq, 200, json_pack("{s:s, s:s, s:b}", "connector", connector, "name", name, "removed", 1));
}

void api_route_rotate_vault(api_server *a, request *rq)
{
    if (!have_vault(a, rq))
        return;
    if (a->cfg->vault_passphrase_file) {
        api_set_reply_error(rq, 409, "vault_passphrase_mode", "this vault is unlocked with a passphrase: rotate it "
                            "offline with `aioctl --config FILE vault rotate` (it asks for the new one)");
        return;
    }
    size_t count = 0;
    ar_error err = {0};
    int rc = vault_rotate(a->vault, NULL, 0, &count, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    ar_log("info", "vault master key rotated by %s: %zu secret(s) re-encrypted", rq->who.name, count);
    api_set_reply_json(rq, 200, json_pack("{s:I}", "rotated", (json_int_t)count));
}
