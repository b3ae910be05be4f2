/* test_config.c - parsing and validation of aiorun.json. */
#include "test_main.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#ifndef AIORUN_SOURCE_DIR
#error "AIORUN_SOURCE_DIR must name the source tree"
#endif

/* Parse text with base_dir "/base"; it must succeed. */
static config *parse_ok(const char *text)
{
    config *cfg = NULL;
    ar_error err;
    ar_error_clear(&err);
    int rc = config_parse(text, "/base", &cfg, &err);
    if (rc != AR_OK)
        fail_msg("config %s refused: %s", text, err.message);
    assert_non_null(cfg);
    return cfg;
}

/* Parse text; it must be refused as invalid_config with exactly want_msg. */
static void refused(const char *text, const char *want_msg)
{
    config *cfg = (config *)&cfg; /* must be reset to NULL */
    ar_error err;
    ar_error_clear(&err);
    int rc = config_parse(text, "/base", &cfg, &err);
    if (rc == AR_OK)
        fail_msg("config %s accepted, wanted \"%s\"", text, want_msg);
    assert_int_equal(rc, AR_E_INVALID);
    assert_null(cfg);
    assert_string_equal(err.code, "invalid_config");
    assert_string_equal(err.message, want_msg);
}

/* Like refused, comparing only the start of the message. */
static void refused_prefix(const char *text, const char *want_prefix)
{
    config *cfg = NULL;
    ar_error err;
    ar_error_clear(&err);
    int rc = config_parse(text, "/base", &cfg, &err);
    if (rc == AR_OK)
        fail_msg("config %s accepted, wanted \"%s...\"", text, want_prefix);
    assert_int_equal(rc, AR_E_INVALID);
    assert_null(cfg);
    assert_string_equal(err.code, "invalid_config");
    if (strncmp(err.message, want_prefix, strlen(want_prefix)) != 0)
        fail_msg("message \"%s\" does not start with \"%s\"", err.message, want_prefix);
}

static void shipped_config_parses(void **state)
{
    (void)state;
    config *cfg = NULL;
    ar_error err;
    ar_error_clear(&err);
    int rc = config_load_file(AIORUN_SOURCE_DIR "/aiorun.json", &cfg, &err);
    if (rc != AR_OK)
        fail_msg("shipped aiorun.json refused: %s", err.message);

    char want[PATH_MAX + 64];
    assert_string_equal(cfg->listen_host, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 8470);
    /* CMake's source directory is absolute and normalized, as config.c writes paths */
    assert_string_equal(cfg->data_dir, AIORUN_SOURCE_DIR "/var");
    assert_string_equal(cfg->plugin_dir, AIORUN_SOURCE_DIR "/build/plugins");
    assert_string_equal(cfg->policy_dir, AIORUN_SOURCE_DIR "/policies");
    assert_int_equal(cfg->map_size_mb, 1024);
    assert_int_equal(cfg->max_body_bytes, 1 << 20);
    assert_int_equal(cfg->decision_workers, 2);
    assert_int_equal(cfg->n_connectors, 1);

    const config_connector *echo = config_find_connector(cfg, "echo");
    assert_non_null(echo);
    assert_string_equal(echo->name, "echo");
    assert_string_equal(echo->plugin, "echo");
    snprintf(want, sizeof want, "%s/echo.so", cfg->plugin_dir);
    assert_string_equal(echo->plugin_path, want);
    assert_true(json_is_object(echo->config));
    assert_int_equal(json_object_size(echo->config), 0);
    assert_int_equal(echo->processes, 2);
    assert_int_equal(echo->timeout_ms, 5000);
    assert_null(config_find_connector(cfg, "nope"));
    config_free(cfg);
}

static void defaults_from_empty_object(void **state)
{
    (void)state;
    config *cfg = parse_ok("{}");
    assert_string_equal(cfg->listen_host, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 8470);
    assert_string_equal(cfg->data_dir, "/base/var");
    assert_string_equal(cfg->plugin_dir, "/base/build/plugins");
    assert_string_equal(cfg->policy_dir, "/base/policies");
    assert_int_equal(cfg->map_size_mb, 1024);
    assert_int_equal(cfg->max_body_bytes, 1024 * 1024);
    assert_int_equal(cfg->decision_workers, 2);
    /* absent policy limits stay 0: policy.h's defaults apply */
    assert_int_equal(cfg->policy.memory_bytes, 0);
    assert_int_equal(cfg->policy.instructions, 0);
    assert_int_equal(cfg->policy.timeout_ms, 0);
    assert_int_equal(cfg->n_connectors, 0);
    assert_null(cfg->connectors);
    assert_null(config_find_connector(cfg, "echo"));
    config_free(cfg);
}

static void null_base_dir_is_current_directory(void **state)
{
    (void)state;
    char cwd[PATH_MAX], want[PATH_MAX + 16];
    assert_non_null(getcwd(cwd, sizeof cwd));
    config *cfg = NULL;
    assert_int_equal(config_parse("{\"data_dir\":\"d\"}", NULL, &cfg, NULL), AR_OK);
    snprintf(want, sizeof want, "%s/d", strcmp(cwd, "/") == 0 ? "" : cwd);
    assert_string_equal(cfg->data_dir, want);
    config_free(cfg);
}

static void all_keys_set(void **state)
{
    (void)state;
    config *cfg = parse_ok(
        "{\"listen\":\"localhost:0\",\"data_dir\":\"/srv/data\",\"plugin_dir\":\"p\","
        "\"policy_dir\":\"pol\",\"map_size_mb\":1,\"max_body_bytes\":1024,"
        "\"decision_workers\":64,\"policy\":{\"memory_kb\":64,\"instructions\":5000,"
        "\"timeout_ms\":10000},\"connectors\":{\"shop-1\":{\"plugin\":\"shopify\","
        "\"config\":{\"store\":\"x\",\"n\":[1,2]},\"processes\":64,\"timeout_ms\":3600000},"
        "\"b_2\":{\"plugin\":\"echo\"}}}");
    assert_string_equal(cfg->listen_host, "localhost");
    assert_int_equal(cfg->listen_port, 0);
    assert_string_equal(cfg->data_dir, "/srv/data");
    assert_string_equal(cfg->plugin_dir, "/base/p");
    assert_string_equal(cfg->policy_dir, "/base/pol");
    assert_int_equal(cfg->map_size_mb, 1);
    assert_int_equal(cfg->max_body_bytes, 1024);
    assert_int_equal(cfg->decision_workers, 64);
    assert_int_equal(cfg->policy.memory_bytes, 64 * 1024);
    assert_int_equal(cfg->policy.instructions, 5000);
    assert_int_equal(cfg->policy.timeout_ms, 10000);
    assert_int_equal(cfg->n_connectors, 2);
    /* in file order */
    assert_string_equal(cfg->connectors[0].name, "shop-1");
    assert_string_equal(cfg->connectors[1].name, "b_2");

    const config_connector *shop = config_find_connector(cfg, "shop-1");
    assert_ptr_equal(shop, &cfg->connectors[0]);
    assert_string_equal(shop->plugin, "shopify");
    assert_string_equal(shop->plugin_path, "/base/p/shopify.so");
    assert_int_equal(shop->processes, 64);
    assert_int_equal(shop->timeout_ms, 3600000);
    json_t *want = json_loads("{\"store\":\"x\",\"n\":[1,2]}", 0, NULL);
    assert_true(json_equal(shop->config, want));
    json_decref(want);

    const config_connector *b = config_find_connector(cfg, "b_2");
    assert_int_equal(b->processes, 2);
    assert_int_equal(b->pipeline, 0); /* absent: the scheduler adapts it */
    assert_int_equal(b->timeout_ms, 10000);
    assert_true(json_is_object(b->config));
    assert_int_equal(json_object_size(b->config), 0);
    assert_null(config_find_connector(NULL, "b_2"));
    assert_null(config_find_connector(cfg, NULL));
    config_free(cfg);
    config_free(NULL);
}

static void invalid_json_names_line_and_column(void **state)
{
    (void)state;
    refused_prefix("{\n  \"listen\": \"127.0.0.1:1\",\n  \"data_dir\" \"x\"\n}",
                   "config: invalid JSON at line 3, column 16: ':' expected near '\"x\"'");
    refused_prefix("", "config: invalid JSON at line ");
    refused_prefix("{\"data_dir\":\"a\",\"data_dir\":\"b\"}", "config: invalid JSON at line 1");
    /* the parser's own words follow the position */
    ar_error err;
    config *cfg = NULL;
    assert_int_equal(config_parse("{\"a\":", "/base", &cfg, &err), AR_E_INVALID);
    assert_true(strlen(err.message) > strlen("config: invalid JSON at line 1, column 5: "));
}

static void top_level_must_be_object(void **state)
{
    (void)state;
    refused("[]", "config: the top level must be a JSON object, got array");
    refused("[{\"listen\":\"127.0.0.1:1\"}]", "config: the top level must be a JSON object, got array");
    refused("\"x\"", "config: invalid JSON at line 1, column 3: '[' or '{' expected near '\"x\"'");
}

static void unknown_keys_named(void **state)
{
    (void)state;
    refused("{\"lisen\":\"127.0.0.1:8470\"}",
            "config: unknown key \"lisen\" (known keys: listen, data_dir, plugin_dir, policy_dir, "
            "map_size_mb, max_body_bytes, decision_workers, policy, connectors, tls, auth_key_file, max_inflight, "
            "max_queue_depth, aging_ms, autonomy, approvers, approval_expiry_s, "
            "policy_watch, vault_key_file, vault_passphrase_file, runtime_dir, drift, log_level, log_format, "
            "retention, cpu_scheduling)");
    refused("{\"policy\":{\"memory\":100}}",
            "policy: unknown key \"memory\" (known keys: memory_kb, instructions, timeout_ms, "
            "default_read, default_write, default_irreversible)");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"procs\":2}}}",
            "connectors.shop: unknown key \"procs\" (known keys: plugin, config, processes, "
            "timeout_ms, deadline_ms, retry, idempotency, secrets, rate_limit, concurrency, pipeline, breaker, allow_ports, sandbox, uid)");
    /* odd characters in the key are escaped */
    refused("{\"a\\\"b\\n\":1}",
            "config: unknown key \"a\\\"b\\u000a\" (known keys: listen, data_dir, plugin_dir, "
            "policy_dir, map_size_mb, max_body_bytes, decision_workers, policy, connectors, tls, auth_key_file, max_inflight, "
            "max_queue_depth, aging_ms, autonomy, approvers, approval_expiry_s, "
            "policy_watch, vault_key_file, vault_passphrase_file, runtime_dir, drift, log_level, log_format, "
            "retention, cpu_scheduling)");
}

static void wrong_types_named(void **state)
{
    (void)state;
    refused("{\"listen\":8470}", "listen: expected string, got integer");
    refused("{\"data_dir\":5}", "data_dir: expected string, got integer");
    refused("{\"plugin_dir\":null}", "plugin_dir: expected string, got null");
    refused("{\"policy_dir\":[\"p\"]}", "policy_dir: expected string, got array");
    refused("{\"data_dir\":\"\"}", "data_dir: must not be empty");
    refused("{\"map_size_mb\":\"1024\"}", "map_size_mb: expected integer 1..1048576, got string");
    refused("{\"map_size_mb\":1.5}", "map_size_mb: expected integer 1..1048576, got number");
    refused("{\"decision_workers\":true}", "decision_workers: expected integer 1..64, got boolean");
    refused("{\"policy\":[]}", "policy: expected object, got array");
    refused("{\"policy\":{\"timeout_ms\":\"5\"}}", "policy.timeout_ms: expected integer 1..10000, got string");
    refused("{\"connectors\":[]}", "connectors: expected object, got array");
    refused("{\"connectors\":{\"shop\":\"shopify\"}}", "connectors.shop: expected object, got string");
    refused("{\"connectors\":{\"shop\":{\"plugin\":3}}}", "connectors.shop.plugin: expected string, got integer");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"config\":[]}}}",
            "connectors.shop.config: expected object, got array");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"timeout_ms\":1.0}}}",
            "connectors.shop.timeout_ms: expected integer 1..3600000, got number");
}

static void ranges_enforced(void **state)
{
    (void)state;
    refused("{\"map_size_mb\":0}", "map_size_mb: expected integer 1..1048576, got 0");
    refused("{\"map_size_mb\":1048577}", "map_size_mb: expected integer 1..1048576, got 1048577");
    refused("{\"max_body_bytes\":1023}", "max_body_bytes: expected integer 1024..67108864, got 1023");
    refused("{\"max_body_bytes\":67108865}", "max_body_bytes: expected integer 1024..67108864, got 67108865");
    refused("{\"decision_workers\":0}", "decision_workers: expected integer 1..64, got 0");
    refused("{\"decision_workers\":65}", "decision_workers: expected integer 1..64, got 65");
    refused("{\"policy\":{\"memory_kb\":63}}", "policy.memory_kb: expected integer 64..1048576, got 63");
    refused("{\"policy\":{\"instructions\":999}}", "policy.instructions: expected integer 1000..1000000000, got 999");
    refused("{\"policy\":{\"timeout_ms\":10001}}", "policy.timeout_ms: expected integer 1..10000, got 10001");
    config *cfg = parse_ok("{\"max_body_bytes\":67108864,\"map_size_mb\":1048576,"
                           "\"policy\":{\"memory_kb\":1048576,\"instructions\":1000000000,\"timeout_ms\":1}}");
    assert_int_equal(cfg->max_body_bytes, 64 << 20);
    assert_int_equal(cfg->map_size_mb, 1048576);
    assert_int_equal(cfg->policy.memory_bytes, (size_t)1 << 30);
    assert_int_equal(cfg->policy.instructions, 1000000000);
    assert_int_equal(cfg->policy.timeout_ms, 1);
    config_free(cfg);
}

static void log_level_and_format(void **state)
{
    (void)state;
    config *cfg = parse_ok("{}");
    assert_int_equal(cfg->log_level, AR_LOG_INFO);
    assert_int_equal(cfg->log_json, 1);
    config_free(cfg);
    cfg = parse_ok("{\"log_level\":\"debug\",\"log_format\":\"text\"}");
    assert_int_equal(cfg->log_level, AR_LOG_DEBUG);
    assert_int_equal(cfg->log_json, 0);
    config_free(cfg);
    cfg = parse_ok("{\"log_level\":\"WARN\",\"log_format\":\"json\"}");
    assert_int_equal(cfg->log_level, AR_LOG_WARN);
    assert_int_equal(cfg->log_json, 1);
    config_free(cfg);
    cfg = parse_ok("{\"log_level\":\"error\"}");
    assert_int_equal(cfg->log_level, AR_LOG_ERROR);
    config_free(cfg);
    refused("{\"log_level\":\"verbose\"}",
            "log_level: expected \"debug\", \"info\", \"warn\" or \"error\", got \"verbose\"");
    refused("{\"log_level\":\"warning\"}",
            "log_level: expected \"debug\", \"info\", \"warn\" or \"error\", got \"warning\"");
    refused("{\"log_level\":2}", "log_level: expected string, got integer");
    refused("{\"log_level\":\"\"}", "log_level: must not be empty");
    refused("{\"log_format\":\"xml\"}", "log_format: expected \"json\" or \"text\", got \"xml\"");
    refused("{\"log_format\":\"JSON\"}", "log_format: expected \"json\" or \"text\", got \"JSON\"");
    refused("{\"log_format\":false}", "log_format: expected string, got boolean");
}

static void cpu_scheduling_batch_or_normal(void **state)
{
    (void)state;
    config *cfg = parse_ok("{}");
    assert_int_equal(cfg->cpu_batch, 1);
    config_free(cfg);
    cfg = parse_ok("{\"cpu_scheduling\":\"normal\"}");
    assert_int_equal(cfg->cpu_batch, 0);
    config_free(cfg);
    cfg = parse_ok("{\"cpu_scheduling\":\"batch\"}");
    assert_int_equal(cfg->cpu_batch, 1);
    config_free(cfg);
    refused("{\"cpu_scheduling\":\"fifo\"}", "cpu_scheduling: expected \"batch\" or \"normal\", got \"fifo\"");
    refused("{\"cpu_scheduling\":\"Batch\"}", "cpu_scheduling: expected \"batch\" or \"normal\", got \"Batch\"");
    refused("{\"cpu_scheduling\":true}", "cpu_scheduling: expected string, got boolean");
    refused("{\"cpu_scheduling\":\"\"}", "cpu_scheduling: must not be empty");
}

static void policy_default_verdicts(void **state)
{
    (void)state;
    /* absent: 0, the built-in defaults */
    config *cfg = parse_ok("{\"policy\":{\"timeout_ms\":5}}");
    assert_int_equal(cfg->policy.default_read, 0);
    assert_int_equal(cfg->policy.default_write, 0);
    assert_int_equal(cfg->policy.default_irreversible, 0);
    config_free(cfg);

    /* stored as verdict + 1 */
    cfg = parse_ok("{\"policy\":{\"default_read\":\"approve\",\"default_write\":\"deny\","
                   "\"default_irreversible\":\"suggest\"}}");
    assert_int_equal(cfg->policy.default_read, POLICY_APPROVE + 1);
    assert_int_equal(cfg->policy.default_write, POLICY_DENY + 1);
    assert_int_equal(cfg->policy.default_irreversible, POLICY_SUGGEST + 1);
    config_free(cfg);
    cfg = parse_ok("{\"policy\":{\"default_write\":\"allow\"}}");
    assert_int_equal(cfg->policy.default_read, 0);
    assert_int_equal(cfg->policy.default_write, POLICY_ALLOW + 1);
    assert_int_equal(cfg->policy.default_irreversible, 0);
    config_free(cfg);

    refused("{\"policy\":{\"default_write\":\"maybe\"}}",
            "policy.default_write: expected \"allow\", \"deny\", \"approve\" or \"suggest\", "
            "got \"maybe\"");
    refused("{\"policy\":{\"default_read\":\"ALLOW\"}}",
            "policy.default_read: expected \"allow\", \"deny\", \"approve\" or \"suggest\", "
            "got \"ALLOW\"");
    refused("{\"policy\":{\"default_irreversible\":1}}",
            "policy.default_irreversible: expected \"allow\", \"deny\", \"approve\" or "
            "\"suggest\", got integer");
    refused("{\"policy\":{\"default_irreversible\":null}}",
            "policy.default_irreversible: expected \"allow\", \"deny\", \"approve\" or "
            "\"suggest\", got null");
    refused("{\"policy\":{\"default_read\":\"\"}}",
            "policy.default_read: expected \"allow\", \"deny\", \"approve\" or \"suggest\", "
            "got \"\"");
}

static void non_loopback_listen_refused(void **state)
{
    (void)state;
    const char *why = " is not a loopback address; listening beyond loopback needs TLS "
                      "(\"tls\": {\"cert\": ..., \"key\": ...}) so that tokens never cross a network in clear";
    char want[400];
    snprintf(want, sizeof want, "listen: 0.0.0.0%s", why);
    refused("{\"listen\":\"0.0.0.0:8470\"}", want);
    snprintf(want, sizeof want, "listen: 192.168.1.10%s", why);
    refused("{\"listen\":\"192.168.1.10:80\"}", want);
    snprintf(want, sizeof want, "listen: ::%s", why);
    refused("{\"listen\":\"[::]:8470\"}", want);
    snprintf(want, sizeof want, "listen: example.com%s", why);
    refused("{\"listen\":\"example.com:80\"}", want);
    refused_prefix("{\"listen\":\"128.0.0.1:80\"}", "listen: 128.0.0.1 is not a loopback address");
    /* an IPv4-mapped address is not accepted either: only ::1 */
    refused_prefix("{\"listen\":\"[::ffff:127.0.0.1]:80\"}", "listen: ::ffff:127.0.0.1 is not a loopback");
}

static void connector_retry_idempotency_and_secrets(void **state)
{
    (void)state;
    config *cfg = parse_ok("{\"connectors\":{\"api\":{\"plugin\":\"http\",\"deadline_ms\":60000,"
                           "\"retry\":{\"max_attempts\":7,\"initial_ms\":50,\"max_ms\":5000,\"multiplier\":3},"
                           "\"idempotency\":{\"request\":\"native\"},\"secrets\":[\"token\", \"signing_key\"],"
                           "\"allow_ports\":[443, 8443],\"sandbox\":{\"landlock\":false},\"uid\":71000}}}");
    const config_connector *c = config_find_connector(cfg, "api");
    assert_int_equal(c->deadline_ms, 60000);
    assert_int_equal(c->retry.max_attempts, 7);
    assert_int_equal(c->retry.initial_ms, 50);
    assert_int_equal(c->retry.max_ms, 5000);
    assert_true(c->retry.multiplier > 2.9 && c->retry.multiplier < 3.1);
    assert_string_equal(json_string_value(json_object_get(c->idempotency, "request")), "native");
    assert_int_equal(c->n_secrets, 2);
    assert_string_equal(c->secrets[0], "token");
    assert_string_equal(c->secrets[1], "signing_key");
    assert_int_equal(c->n_allow_ports, 2);
    assert_int_equal(c->allow_ports[1], 8443);
    assert_int_equal(c->sandbox_landlock, 0);
    assert_int_equal(c->sandbox_seccomp, 1);
    assert_int_equal(c->uid, 71000);
    config_free(cfg);
    cfg = parse_ok("{\"connectors\":{\"e\":{\"plugin\":\"echo\"},\"f\":{\"plugin\":\"echo\"}}}");
    c = config_find_connector(cfg, "e");
    assert_int_equal(c->retry.max_attempts, 5);
    assert_int_equal(c->deadline_ms, 300000);
    assert_null(c->idempotency);
    assert_int_equal(c->n_secrets, 0);
    /* Secure by default: HTTPS only, every layer on, a uid of its own. */
    assert_int_equal(c->n_allow_ports, 1);
    assert_int_equal(c->allow_ports[0], 443);
    assert_true(c->sandbox_rlimits && c->sandbox_uid && c->sandbox_landlock && c->sandbox_seccomp);
    assert_int_not_equal(c->uid, config_find_connector(cfg, "f")->uid);
    assert_true(c->uid >= 70000);
    config_free(cfg);
    refused("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"idempotency\":{\"x\":\"maybe\"}}}}",
            "connectors.e.idempotency.x: expected \"native\", \"lookup\" or \"none\", got \"maybe\"");
    refused("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"retry\":{\"initial_ms\":500,\"max_ms\":100}}}}",
            "connectors.e.retry: max_ms (100) is below initial_ms (500)");
    refused_prefix("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"secrets\":{\"k\":\"v\"}}}}",
                   "connectors.e.secrets: secret values no longer go in the config");
    refused("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"secrets\":[\"k\", \"k\"]}}}",
            "connectors.e.secrets: \"k\" is listed twice");
    refused("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"allow_ports\":[0]}}}",
            "connectors.e.allow_ports[0]: expected a port 1..65535");
    refused("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"sandbox\":{\"seccomp\":\"no\"}}}}",
            "connectors.e.sandbox.seccomp: expected true or false, got string");
    refused_prefix("{\"connectors\":{\"e\":{\"plugin\":\"echo\",\"uid\":70500},\"f\":{\"plugin\":\"echo\",\"uid\":70500}}}",
                   "connectors.f.uid: 70500 is also the uid of connector e");
}

static void autonomy_and_approvers(void **state)
{
    (void)state;
    config *cfg = parse_ok("{\"autonomy\": {\"shop.refund\": \"semi\", \"tickets.*\": \"auto\", \"*\": \"suggest\"},"
                           " \"approvers\": {\"finance\": [\"approver\", \"token:alice\"]}, \"approval_expiry_s\": 600}");
    assert_string_equal(json_string_value(json_object_get(cfg->autonomy, "shop.refund")), "semi");
    assert_int_equal(json_array_size(json_object_get(cfg->approvers, "finance")), 2);
    assert_int_equal(cfg->approval_expiry_s, 600);
    config_free(cfg);
    cfg = parse_ok("{}");
    assert_null(cfg->autonomy);
    assert_int_equal(cfg->approval_expiry_s, 86400);
    config_free(cfg);
    refused("{\"autonomy\": {\"shop\": \"semi\"}}",
            "autonomy: pattern \"shop\" must be \"connector.action\", \"connector.*\" or \"*\"");
    refused("{\"autonomy\": {\"shop.x\": \"loose\"}}", "autonomy.shop.x: expected \"auto\", \"semi\" or \"suggest\"");
    refused("{\"approvers\": {\"finance\": [\"king\"]}}",
            "approvers.finance[0]: expected a token role (submitter, approver, operator, reader) or \"token:NAME\"");
    refused("{\"approvers\": {\"finance\": []}}",
            "approvers.finance: expected a non-empty array of token roles or \"token:NAME\"");
}

static void non_loopback_listen_with_tls_accepted(void **state)
{
    (void)state;
    config *cfg = parse_ok("{\"listen\":\"0.0.0.0:8443\", \"tls\": {\"cert\": \"c.pem\", \"key\": \"/k.pem\"}}");
    assert_string_equal(cfg->listen_host, "0.0.0.0");
    assert_int_equal(cfg->listen_loopback, 0);
    assert_string_equal(cfg->tls_cert, "/base/c.pem");
    assert_string_equal(cfg->tls_key, "/k.pem");
    config_free(cfg);
    refused("{\"tls\": {\"cert\": \"c.pem\"}}", "tls.key: required (a PEM file path)");
    refused_prefix("{\"tls\": {\"cert\": \"c.pem\", \"key\": \"k\", \"ca\": 1}}", "tls: unknown key \"ca\"");
    refused_prefix("{\"tls\": true}", "tls: expected object");
}

static void bad_listen_syntax_refused(void **state)
{
    (void)state;
    refused("{\"listen\":\"127.0.0.1:65536\"}", "listen: port must be an integer 0..65535, got \"65536\"");
    refused("{\"listen\":\"127.0.0.1:\"}", "listen: port must be an integer 0..65535, got \"\"");
    refused("{\"listen\":\"127.0.0.1:http\"}", "listen: port must be an integer 0..65535, got \"http\"");
    refused("{\"listen\":\"127.0.0.1:-1\"}", "listen: port must be an integer 0..65535, got \"-1\"");
    refused("{\"listen\":\"127.0.0.1:99999999999\"}",
            "listen: port must be an integer 0..65535, got \"99999999999\"");
    refused_prefix("{\"listen\":\"127.0.0.1\"}", "listen: expected \"host:port\"");
    refused_prefix("{\"listen\":\"::1:8470\"}", "listen: expected \"host:port\"");
    refused_prefix("{\"listen\":\"[::1]8470\"}", "listen: expected \"host:port\" with an IPv6 host in brackets");
    refused_prefix("{\"listen\":\"[127.0.0.1]:80\"}", "listen: \"127.0.0.1\" is not a valid host");
    refused_prefix("{\"listen\":\":8470\"}", "listen: missing host");
}

static void loopback_listen_accepted(void **state)
{
    (void)state;
    config *cfg = parse_ok("{\"listen\":\"[::1]:8470\"}");
    assert_string_equal(cfg->listen_host, "::1");
    assert_int_equal(cfg->listen_port, 8470);
    config_free(cfg);
    cfg = parse_ok("{\"listen\":\"127.4.5.6:65535\"}");
    assert_string_equal(cfg->listen_host, "127.4.5.6");
    assert_int_equal(cfg->listen_port, 65535);
    config_free(cfg);
    cfg = parse_ok("{\"listen\":\"localhost:1\"}");
    assert_string_equal(cfg->listen_host, "localhost");
    assert_int_equal(cfg->listen_port, 1);
    config_free(cfg);
}

static void connector_plugin_required(void **state)
{
    (void)state;
    refused_prefix("{\"connectors\":{\"shop\":{}}}", "connectors.shop.plugin: required");
    refused_prefix("{\"connectors\":{\"shop\":{\"processes\":2}}}", "connectors.shop.plugin: required");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"\"}}}", "connectors.shop.plugin: must not be empty");
}

static void connector_name_checked(void **state)
{
    (void)state;
    const char *want = "(use 1 to 64 characters of a-z, 0-9, _ and -)";
    char msg[256];
    snprintf(msg, sizeof msg, "connectors: invalid name \"Shop\" %s", want);
    refused("{\"connectors\":{\"Shop\":{\"plugin\":\"s\"}}}", msg);
    snprintf(msg, sizeof msg, "connectors: invalid name \"\" %s", want);
    refused("{\"connectors\":{\"\":{\"plugin\":\"s\"}}}", msg);
    snprintf(msg, sizeof msg, "connectors: invalid name \"a b\" %s", want);
    refused("{\"connectors\":{\"a b\":{\"plugin\":\"s\"}}}", msg);
    snprintf(msg, sizeof msg, "connectors: invalid name \"../x\" %s", want);
    refused("{\"connectors\":{\"../x\":{\"plugin\":\"s\"}}}", msg);

    char name[80], text[200];
    memset(name, 'a', 64);
    name[64] = '\0';
    snprintf(text, sizeof text, "{\"connectors\":{\"%s\":{\"plugin\":\"s\"}}}", name);
    config *cfg = parse_ok(text);
    assert_non_null(config_find_connector(cfg, name));
    config_free(cfg);
    strcat(name, "a");
    snprintf(text, sizeof text, "{\"connectors\":{\"%s\":{\"plugin\":\"s\"}}}", name);
    refused_prefix(text, "connectors: invalid name \"aaaa");
    /* an error in a later connector frees the earlier, complete ones (checked by ASan) */
    refused("{\"connectors\":{\"ok\":{\"plugin\":\"s\",\"config\":{\"k\":1}},\"BAD\":{}}}",
            "connectors: invalid name \"BAD\" (use 1 to 64 characters of a-z, 0-9, _ and -)");
}

static void connector_ranges(void **state)
{
    (void)state;
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"processes\":0}}}",
            "connectors.shop.processes: expected integer 1..64, got 0");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"pipeline\":0}}}",
            "connectors.shop.pipeline: expected integer 1..4096, got 0");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"pipeline\":\"deep\"}}}",
            "connectors.shop.pipeline: expected integer 1..4096, got string");
    config *deep = parse_ok("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"pipeline\":3}}}");
    assert_int_equal(config_find_connector(deep, "shop")->pipeline, 3);
    config_free(deep);
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"processes\":65}}}",
            "connectors.shop.processes: expected integer 1..64, got 65");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"timeout_ms\":0}}}",
            "connectors.shop.timeout_ms: expected integer 1..3600000, got 0");
    refused("{\"connectors\":{\"shop\":{\"plugin\":\"s\",\"timeout_ms\":3600001}}}",
            "connectors.shop.timeout_ms: expected integer 1..3600000, got 3600001");
}

static void relative_paths_resolved_against_base_dir(void **state)
{
    (void)state;
    config *cfg = parse_ok("{\"data_dir\":\"./data/./x/\",\"plugin_dir\":\"../plugins\","
                           "\"policy_dir\":\"/etc//aiorun/policies\"}");
    assert_string_equal(cfg->data_dir, "/base/data/x");
    /* ".." is kept: resolving it by hand is wrong across symlinks */
    assert_string_equal(cfg->plugin_dir, "/base/../plugins");
    assert_string_equal(cfg->policy_dir, "/etc/aiorun/policies");
    config_free(cfg);

    ar_error err;
    cfg = NULL;
    assert_int_equal(config_parse("{\"data_dir\":\".\"}", "/srv//app/./", &cfg, &err), AR_OK);
    assert_string_equal(cfg->data_dir, "/srv/app");
    assert_string_equal(cfg->policy_dir, "/srv/app/policies");
    config_free(cfg);
    assert_int_equal(config_parse("{\"data_dir\":\"d\"}", "/", &cfg, &err), AR_OK);
    assert_string_equal(cfg->data_dir, "/d");
    config_free(cfg);
}

static void plugin_given_as_path(void **state)
{
    (void)state;
    config *cfg = parse_ok("{\"plugin_dir\":\"/opt/plugins\",\"connectors\":{"
                           "\"a\":{\"plugin\":\"./custom/my.so\"},"
                           "\"b\":{\"plugin\":\"/usr/lib/aiorun/x.so\"},"
                           "\"c\":{\"plugin\":\"echo\"}}}");
    assert_string_equal(config_find_connector(cfg, "a")->plugin_path, "/base/custom/my.so");
    assert_string_equal(config_find_connector(cfg, "a")->plugin, "./custom/my.so");
    assert_string_equal(config_find_connector(cfg, "b")->plugin_path, "/usr/lib/aiorun/x.so");
    assert_string_equal(config_find_connector(cfg, "c")->plugin_path, "/opt/plugins/echo.so");
    config_free(cfg);
    /* plugin_dir after connectors in the file still applies */
    cfg = parse_ok("{\"connectors\":{\"c\":{\"plugin\":\"echo\"}},\"plugin_dir\":\"pl\"}");
    assert_string_equal(cfg->connectors[0].plugin_path, "/base/pl/echo.so");
    config_free(cfg);
}

static void load_file_missing_names_path(void **state)
{
    (void)state;
    config *cfg = (config *)&cfg;
    ar_error err;
    ar_error_clear(&err);
    const char *path = "/nonexistent-aiorun-dir/aiorun.json";
    assert_int_equal(config_load_file(path, &cfg, &err), AR_E_IO);
    assert_null(cfg);
    assert_string_equal(err.code, "invalid_config");
    char want[256];
    snprintf(want, sizeof want, "config: cannot open %s: %s", path, strerror(ENOENT));
    assert_string_equal(err.message, want);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* A temporary directory for the file tests; teardown removes it even after a failed assert. */
typedef struct tmpdir {
    char dir[64];
    char path[128];    /* dir/aiorun.json */
    char cwd[PATH_MAX];
} tmpdir;

static int tmpdir_setup(void **state)
{
    tmpdir *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    snprintf(t->dir, sizeof t->dir, "/tmp/aiorun-test-config-XXXXXX");
    if (!mkdtemp(t->dir) || !getcwd(t->cwd, sizeof t->cwd)) {
        free(t);
        return -1;
    }
    snprintf(t->path, sizeof t->path, "%s/aiorun.json", t->dir);
    *state = t;
    return 0;
}

static int tmpdir_teardown(void **state)
{
    tmpdir *t = *state;
    int rc = chdir(t->cwd);
    unlink(t->path);
    rc |= rmdir(t->dir);
    free(t);
    return rc == 0 ? 0 : -1;
}

static void load_file_resolves_against_its_directory(void **state)
{
    tmpdir *t = *state;
    const char *dir = t->dir, *path = t->path;
    char want[256];
    write_file(path, "{\"data_dir\":\"state\",\"connectors\":{\"x\":{\"plugin\":\"lib/x.so\"}}}");

    config *cfg = NULL;
    ar_error err;
    assert_int_equal(config_load_file(path, &cfg, &err), AR_OK);
    snprintf(want, sizeof want, "%s/state", dir);
    assert_string_equal(cfg->data_dir, want);
    snprintf(want, sizeof want, "%s/lib/x.so", dir);
    assert_string_equal(cfg->connectors[0].plugin_path, want);
    config_free(cfg);

    /* a relative path is taken from the current directory (teardown restores it) */
    assert_int_equal(chdir("/tmp"), 0);
    assert_int_equal(config_load_file(path + strlen("/tmp/"), &cfg, &err), AR_OK);
    snprintf(want, sizeof want, "%s/state", dir);
    assert_string_equal(cfg->data_dir, want);
    config_free(cfg);
    assert_int_equal(chdir(t->cwd), 0);

    /* an error in the file names the file, then the key */
    write_file(path, "{\"decision_workers\":0}");
    cfg = (config *)&cfg;
    assert_int_equal(config_load_file(path, &cfg, &err), AR_E_INVALID);
    assert_null(cfg);
    snprintf(want, sizeof want, "%s: decision_workers: expected integer 1..64, got 0", path);
    assert_string_equal(err.message, want);

    /* a NUL byte inside the file is invalid JSON, not a silently shorter file */
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite("{}\0{", 1, 4, f), 4);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(config_load_file(path, &cfg, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "invalid JSON"));

    /* a directory is not a config file */
    assert_int_equal(config_load_file(dir, &cfg, &err), AR_E_IO);
    assert_non_null(strstr(err.message, dir));
}

/* retention: defaults, fractional days, and each refusal named. */
static void retention_block(void **state)
{
    (void)state;
    config *cfg = parse_ok("{}");
    assert_true(cfg->retention.actions_days == 30);
    assert_true(cfg->retention.idempotency_days == 90);
    assert_true(cfg->retention.audit_bodies_days == 365);
    assert_true(cfg->retention.audit_entries_days == 1095);
    assert_int_equal(cfg->retention.interval_s, 3600);
    config_free(cfg);

    /* audit_entries_days: fractions; equal to audit_bodies_days is enough */
    cfg = parse_ok("{\"retention\":{\"audit_bodies_days\":0.00002,\"audit_entries_days\":0.00002}}");
    assert_true(cfg->retention.audit_entries_days == 0.00002);
    config_free(cfg);
    cfg = parse_ok("{\"retention\":{\"audit_entries_days\":3650}}");
    assert_true(cfg->retention.audit_entries_days == 3650);
    assert_true(cfg->retention.audit_bodies_days == 365);
    config_free(cfg);
    /* not given: a longer audit_bodies_days (a config from before it existed) is followed */
    cfg = parse_ok("{\"retention\":{\"audit_bodies_days\":2000}}");
    assert_true(cfg->retention.audit_entries_days == 2000);
    config_free(cfg);

    cfg = parse_ok("{\"retention\":{\"actions_days\":0.0001,\"idempotency_days\":0.0002,"
                   "\"audit_bodies_days\":2,\"interval_s\":10}}");
    assert_true(cfg->retention.actions_days == 0.0001);
    assert_true(cfg->retention.idempotency_days == 0.0002);
    assert_true(cfg->retention.audit_bodies_days == 2);
    assert_int_equal(cfg->retention.interval_s, 10);
    config_free(cfg);

    /* only idempotency_days given: actions_days keeps its default, which must not exceed it */
    cfg = parse_ok("{\"retention\":{\"idempotency_days\":30}}");
    assert_true(cfg->retention.idempotency_days == 30);
    config_free(cfg);

    refused("{\"retention\":[]}", "retention: expected object, got array");
    refused("{\"retention\":{\"days\":1}}",
            "retention: unknown key \"days\" (known keys: actions_days, idempotency_days, audit_bodies_days, "
            "audit_entries_days, interval_s)");
    refused("{\"retention\":{\"actions_days\":\"30\"}}",
            "retention.actions_days: expected a number of days above 0 (at most 36500), got string");
    refused("{\"retention\":{\"audit_bodies_days\":0}}",
            "retention.audit_bodies_days: expected a number of days above 0 (at most 36500), got 0");
    refused("{\"retention\":{\"idempotency_days\":-1}}",
            "retention.idempotency_days: expected a number of days above 0 (at most 36500), got -1");
    refused("{\"retention\":{\"audit_entries_days\":0}}",
            "retention.audit_entries_days: expected a number of days above 0 (at most 36500), got 0");
    refused("{\"retention\":{\"audit_entries_days\":300}}",
            "retention: audit_entries_days (300) is below audit_bodies_days (365): the audit entries must "
            "outlive their bodies");
    refused("{\"retention\":{\"audit_bodies_days\":10,\"audit_entries_days\":9.5}}",
            "retention: audit_entries_days (9.5) is below audit_bodies_days (10): the audit entries must "
            "outlive their bodies");
    refused("{\"retention\":{\"interval_s\":9}}", "retention.interval_s: expected integer 10..604800, got 9");
    refused("{\"retention\":{\"interval_s\":60.5}}",
            "retention.interval_s: expected integer 10..604800, got number");
    refused("{\"retention\":{\"actions_days\":10,\"idempotency_days\":5}}",
            "retention: idempotency_days (5) is below actions_days (10): the idempotency keys must outlive "
            "the actions they answer for");
    refused("{\"retention\":{\"idempotency_days\":20}}",
            "retention: idempotency_days (20) is below actions_days (30): the idempotency keys must outlive "
            "the actions they answer for");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(shipped_config_parses),
    cmocka_unit_test(defaults_from_empty_object),
    cmocka_unit_test(null_base_dir_is_current_directory),
    cmocka_unit_test(all_keys_set),
    cmocka_unit_test(invalid_json_names_line_and_column),
    cmocka_unit_test(top_level_must_be_object),
    cmocka_unit_test(unknown_keys_named),
    cmocka_unit_test(wrong_types_named),
    cmocka_unit_test(ranges_enforced),
    cmocka_unit_test(log_level_and_format),
    cmocka_unit_test(cpu_scheduling_batch_or_normal),
    cmocka_unit_test(retention_block),
    cmocka_unit_test(policy_default_verdicts),
    cmocka_unit_test(non_loopback_listen_refused),
    cmocka_unit_test(non_loopback_listen_with_tls_accepted),
    cmocka_unit_test(autonomy_and_approvers),
    cmocka_unit_test(connector_retry_idempotency_and_secrets),
    cmocka_unit_test(bad_listen_syntax_refused),
    cmocka_unit_test(loopback_listen_accepted),
    cmocka_unit_test(connector_plugin_required),
    cmocka_unit_test(connector_name_checked),
    cmocka_unit_test(connector_ranges),
    cmocka_unit_test(relative_paths_resolved_against_base_dir),
    cmocka_unit_test(plugin_given_as_path),
    cmocka_unit_test(load_file_missing_names_path),
    cmocka_unit_test_setup_teardown(load_file_resolves_against_its_directory, tmpdir_setup, tmpdir_teardown),
};

AR_TEST_MAIN(tests, NULL, NULL)
