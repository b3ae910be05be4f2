/*
 * client.h - aioctl's HTTP/JSON client for the aiorun daemon's API (libcurl + jansson).
 *
 * One client per process, used from one thread. Every call either returns a parsed JSON reply
 * or explains on stderr why there is none (daemon unreachable, timeout, error reply), so the
 * commands in aioctl.c only decide what to print on success. Return values are aioctl exit
 * codes (aioctl.h). curl_global_init must have been called before client_new.
 */
#ifndef AIOCTL_CLIENT_H
#define AIOCTL_CLIENT_H

#include <stddef.h>
#include <jansson.h>

typedef struct client client;

typedef struct reply {
    long status;    /* HTTP status; 0 when the daemon did not answer */
    char *body;     /* owned by the reply: the body exactly as received, NUL-terminated; or NULL */
    size_t len;     /* bytes in body (not counting the NUL) */
    json_t *json;   /* owned by the reply (a new reference): the parsed body, or NULL */
    long retry_after_s; /* the reply's Retry-After in seconds (an HTTP date made relative to
                           now, at least 0); -1 when it sent none or an unreadable one */
} reply;

/* base_url: "http://host:port" (a trailing '/' is dropped); copied. timeout_ms: how long a
 * request may take beyond any wait it asks the daemon for. token: the API token sent with
 * every request as "Authorization: Bearer <token>", or NULL to send none; copied, and the copy
 * is wiped by client_free. *out owned by the caller (client_free). Returns AIOCTL_OK, or
 * AIOCTL_USAGE for a URL that is not http(s). */
int client_new(const char *base_url, long timeout_ms, const char *token, client **out);
void client_free(client *c);

/* The base URL, without a trailing '/'. Borrowed from the client. */
const char *client_url(const client *c);

/* Send METHOD (GET, POST, PUT, DELETE) to base_url + path (path starts with '/' and is already
 * percent-encoded). body: sent as compact JSON when not NULL (borrowed). extra_ms: how long
 * the daemon may legitimately hold the request (wait_ms); added to the timeout.
 * rep is always initialised (release it with reply_fini). Returns:
 *   AIOCTL_OK          2xx with a JSON body (rep->json set);
 *   AIOCTL_REFUSED     an error status (prints "error: <code>: <message>" to stderr) or an
 *                      unreadable reply; rep->body holds what the daemon sent, if anything;
 *   AIOCTL_UNREACHABLE no answer (refused connection, unknown host, timeout); explained on stderr;
 *   AIOCTL_USAGE       the URL is malformed. */
int client_call(client *c, const char *method, const char *path, const json_t *body,
                long extra_ms, reply *rep);

/* Release what a reply owns and zero it; the raw body is wiped first (it may hold a new
 * token). Safe on a zeroed reply. */
void reply_fini(reply *rep);

/* Percent-encode s for a path segment or query value (RFC 3986 unreserved characters pass).
 * Returns a malloc'd string owned by the caller, or NULL when out of memory. */
char *client_escape(const char *s);

#endif
