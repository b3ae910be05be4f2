/* api_audit.c - the API's audit routes: one action's story, the stream of entries, the chain's
 * verification and its head. Entries are returned as stored (they never hold a secret). */
#include "api_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"

/* A query argument as an unsigned integer; def when absent. 0 with a 400 set when invalid. */
static int query_u64(request *rq, const char *name, uint64_t def, uint64_t max, uint64_t *out)
{
    const char *s = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
    *out = def;
    if (!s || !*s)
        return 1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v > max || s[0] == '-') {
        api_set_reply_error(rq, 400, "invalid_request", "%s must be an integer from 0 to %llu", name,
                            (unsigned long long)max);
        return 0;
    }
    *out = v;
    return 1;
}

void api_route_action_audit(api_server *a, request *rq, const char *id)
{
    /* A token that sees only its own actions needs the record to prove it; other readers also
     * get the story of an action compacted out of the history (its entries outlive it). */
    if (rq->own_only) {
        json_t *rec = api_load_visible(a, rq, id); /* 404 unless the caller may see it */
        if (!rec)
            return;
        json_decref(rec);
    }
    json_t *entries = NULL;
    ar_error err = {0};
    int rc = audit_read_action(a->journal, id, &entries, &err);
    if (rc == AR_OK && json_array_size(entries) == 0) {
        json_decref(entries);
        rc = ar_error_set(&err, AR_E_NOTFOUND, "not_found", "no action with id %s", id);
    }
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_set_reply_json(rq, 200, json_pack("{s:s, s:o}", "id", id, "entries", entries));
}

void api_route_audit_stream(api_server *a, request *rq)
{
    uint64_t after, limit;
    if (!query_u64(rq, "after", 0, UINT64_MAX, &after) || !query_u64(rq, "limit", 100, MAX_LIST_LIMIT, &limit))
        return;
    if (limit == 0)
        limit = 1;
    json_t *entries = NULL;
    uint64_t next = after;
    ar_error err = {0};
    int rc = audit_read_after(a->journal, after, (size_t)limit, &entries, &next, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_set_reply_json(rq, 200, json_pack("{s:o, s:I}", "entries", entries, "next", (json_int_t)next));
}

void api_route_audit_verify(api_server *a, request *rq)
{
    uint64_t seq;
    if (!query_u64(rq, "seq", 0, UINT64_MAX, &seq))
        return;
    const char *head = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "head");
    if ((seq > 0) != (head && *head)) {
        api_set_reply_error(rq, 400, "invalid_request", "give both seq and head (an exported head), or neither");
        return;
    }
    audit_verify_result v;
    ar_error err = {0};
    int rc = audit_verify(a->journal, seq, head, &v, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    json_t *doc = v.ok ? json_pack("{s:b, s:I, s:s}", "ok", 1, "entries", (json_int_t)v.entries, "head", v.head)
                       : json_pack("{s:b, s:I, s:I, s:s}", "ok", 0, "entries", (json_int_t)v.entries,
                                   "first_bad_seq", (json_int_t)v.first_bad_seq, "reason", v.reason);
    /* Bounded history: where the trail kept starts, the cut, and a kept head too old to check. */
    if (doc && v.ok)
        json_object_set_new(doc, "first_seq", json_integer((json_int_t)v.first_seq));
    if (doc && v.cut_through) {
        json_object_set_new(doc, "cut_through", json_integer((json_int_t)v.cut_through));
        json_object_set_new(doc, "cut_ms", json_integer((json_int_t)v.cut_ms));
    }
    if (doc && v.ok && v.head_unchecked) {
        json_object_set_new(doc, "head_unchecked", json_true());
        json_object_set_new(doc, "head_note", json_string(v.head_note));
    }
    api_set_reply_json(rq, 200, doc);
}

void api_route_audit_head(api_server *a, request *rq)
{
    json_t *doc = NULL;
    ar_error err = {0};
    int rc = audit_head_document(a->journal, NULL, &doc, &err);
    if (rc != AR_OK) {
        api_set_reply_ar_error(rq, rc, &err);
        return;
    }
    api_set_reply_json(rq, 200, doc);
}
