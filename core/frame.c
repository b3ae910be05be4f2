/* frame.c - the daemon <-> sandbox host wire format (see frame.h). */
#include "frame.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aiorun/plugin.h"
#include "jsonw.h"

/* Bytes read per read(2) in frame_read_fd. */
#define READ_CHUNK (64u * 1024u)
/* A decoder buffer larger than this is released once it is empty, so that one big result does
 * not pin its memory for the life of the connection. */
#define DECODER_KEEP_CAP (256u * 1024u)

static size_t effective_max(size_t max_payload)
{
    if (max_payload == 0)
        max_payload = FRAME_DEFAULT_MAX_PAYLOAD;
    if (max_payload > UINT32_MAX)
        max_payload = UINT32_MAX;
    return max_payload;
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int type_known(unsigned type)
{
    return type >= FRAME_HELLO && type <= FRAME_SHUTDOWN;
}

void frame_clear(frame *f)
{
    if (!f)
        return;
    json_decref(f->payload);
    f->payload = NULL;
}

int frame_encode(frame_type type, uint32_t request_id, const json_t *payload,
                 size_t max_payload, uint8_t **out, size_t *out_len, ar_error *err)
{
    size_t max = effective_max(max_payload);
    json_t *empty = NULL;

    *out = NULL;
    *out_len = 0;
    if (!type_known((unsigned)type))
        return ar_error_set(err, AR_E_INVALID, "protocol_error", "unknown frame type %d", (int)type);
    if (!payload)
        payload = empty = json_object();
    if (!payload)
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
    if (!json_is_object(payload)) {
        json_decref(empty);
        return ar_error_set(err, AR_E_INVALID, "protocol_error", "frame payload must be a JSON object");
    }

    /* Written once behind the header: on the stack when small (then one allocation of the
     * exact size), else in the heap buffer it grew into (big results are not copied). */
    char small[4096];
    jsonw_buf text = {small, FRAME_HEADER_SIZE, sizeof small, 1};
    int dumped = jsonw_append(&text, payload, JSON_COMPACT);
    json_decref(empty);
    size_t plen = text.len - FRAME_HEADER_SIZE;
    if (dumped != 0 || plen > max) {
        jsonw_buf_free(&text);
        if (dumped != 0) /* not UTF-8, or out of memory (far less likely) */
            return ar_error_set(err, AR_E_INVALID, "protocol_error", "frame payload cannot be encoded");
        return ar_error_set(err, AR_E_INVALID, "frame_too_large",
                            "frame payload of %zu bytes exceeds the limit of %zu bytes", plen, max);
    }
    uint8_t *buf = text.borrowed ? malloc(text.len) : (uint8_t *)text.data;
    if (!buf)
        return ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory for a frame of %zu bytes", plen);
    if (text.borrowed)
        memcpy(buf, text.data, text.len);
    frame_seal(buf, text.len, type, request_id, max_payload, NULL); /* checked above */
    *out = buf;
    *out_len = FRAME_HEADER_SIZE + plen;
    return AR_OK;
}

int frame_seal(uint8_t *buf, size_t len, frame_type type, uint32_t request_id, size_t max_payload,
               ar_error *err)
{
    size_t max = effective_max(max_payload);
    if (!type_known((unsigned)type))
        return ar_error_set(err, AR_E_INVALID, "protocol_error", "unknown frame type %d", (int)type);
    if (len < FRAME_HEADER_SIZE)
        return ar_error_set(err, AR_E_INVALID, "protocol_error", "frame without room for its header");
    size_t plen = len - FRAME_HEADER_SIZE;
    if (plen > max)
        return ar_error_set(err, AR_E_INVALID, "frame_too_large",
                            "frame payload of %zu bytes exceeds the limit of %zu bytes", plen, max);
    buf[0] = 'A';
    buf[1] = 'R';
    buf[2] = FRAME_PROTOCOL_VERSION;
    buf[3] = (uint8_t)type;
    put_be32(buf + 4, request_id);
    put_be32(buf + 8, (uint32_t)plen);
    return AR_OK;
}

void frame_decoder_init(frame_decoder *d, size_t max_payload)
{
    memset(d, 0, sizeof *d);
    d->max_payload = effective_max(max_payload);
}

void frame_decoder_fini(frame_decoder *d)
{
    if (!d)
        return;
    free(d->buf);
    d->buf = NULL;
    d->len = d->cap = 0;
}

/* Check a complete 12-byte header. AR_OK or AR_E_INVALID with the reason. */
static int check_header(const frame_decoder *d, const uint8_t *h, ar_error *err)
{
    if (h[0] != 'A' || h[1] != 'R')
        return ar_error_set(err, AR_E_INVALID, "protocol_error",
                            "bad frame magic 0x%02x%02x (expected \"AR\")", h[0], h[1]);
    if (h[2] != FRAME_PROTOCOL_VERSION)
        return ar_error_set(err, AR_E_INVALID, "protocol_error",
                            "frame protocol version %u, expected %u", h[2], FRAME_PROTOCOL_VERSION);
    if (!type_known(h[3]))
        return ar_error_set(err, AR_E_INVALID, "protocol_error", "unknown frame type %u", h[3]);
    uint32_t plen = get_be32(h + 8);
    if (plen > d->max_payload)
        return ar_error_set(err, AR_E_INVALID, "protocol_error",
                            "frame payload of %u bytes exceeds the limit of %zu bytes",
                            plen, d->max_payload);
    return AR_OK;
}

static int reserve(frame_decoder *d, size_t need)
{
    if (need <= d->cap)
        return AR_OK;
    size_t cap = d->cap ? d->cap : 4096;
    while (cap < need)
        cap *= 2;
    uint8_t *nb = realloc(d->buf, cap);
    if (!nb)
        return AR_E_NOMEM;
    d->buf = nb;
    d->cap = cap;
    return AR_OK;
}

/*
 * Bytes are appended one frame at a time: a header is checked as soon as its 12 bytes are in,
 * and a frame is never buffered past the length its (valid) header announced. So an oversized
 * or bogus header costs at most 12 bytes of memory, however much the peer sends after it. A
 * bad header stays at the tail of the buffer so that frame_decoder_next reports it (after the
 * good frames before it); everything after it is dropped.
 */
int frame_decoder_feed(frame_decoder *d, const void *data, size_t n)
{
    const uint8_t *p = data;

    if (d->failed)
        return AR_OK;
    /* Find the start of the incomplete frame at the tail; stop feeding behind a bad header. */
    size_t pos = 0;
    while (d->len - pos >= FRAME_HEADER_SIZE) {
        if (check_header(d, d->buf + pos, NULL) != AR_OK)
            return AR_OK;
        uint32_t plen = get_be32(d->buf + pos + 8);
        if (d->len - pos - FRAME_HEADER_SIZE < plen)
            break;
        pos += FRAME_HEADER_SIZE + plen;
    }
    while (n > 0) {
        size_t have = d->len - pos;
        size_t need;
        if (have < FRAME_HEADER_SIZE)
            need = FRAME_HEADER_SIZE - have;
        else
            need = FRAME_HEADER_SIZE + get_be32(d->buf + pos + 8) - have;
        size_t take = n < need ? n : need;
        if (reserve(d, d->len + take) != AR_OK)
            return AR_E_NOMEM;
        memcpy(d->buf + d->len, p, take);
        d->len += take;
        p += take;
        n -= take;
        have += take;
        if (have == FRAME_HEADER_SIZE && check_header(d, d->buf + pos, NULL) != AR_OK)
            return AR_OK;
        if (have >= FRAME_HEADER_SIZE && have == FRAME_HEADER_SIZE + get_be32(d->buf + pos + 8))
            pos = d->len;
    }
    return AR_OK;
}

static int decoder_fail(frame_decoder *d)
{
    d->failed = 1;
    free(d->buf);
    d->buf = NULL;
    d->len = d->cap = 0;
    return AR_E_INVALID;
}

int frame_decoder_next(frame_decoder *d, frame *out, ar_error *err)
{
    out->type = 0;
    out->request_id = 0;
    out->payload = NULL;
    if (d->failed)
        return ar_error_set(err, AR_E_INVALID, "protocol_error",
                            "the stream already had a protocol error");
    if (d->len < FRAME_HEADER_SIZE)
        return AR_E_NOTFOUND;
    if (check_header(d, d->buf, err) != AR_OK)
        return decoder_fail(d);
    uint32_t plen = get_be32(d->buf + 8);
    if (d->len - FRAME_HEADER_SIZE < plen)
        return AR_E_NOTFOUND;

    json_error_t jerr;
    json_t *payload = json_loadb((const char *)d->buf + FRAME_HEADER_SIZE, plen,
                                 JSON_REJECT_DUPLICATES, &jerr);
    if (!payload) {
        ar_error_set(err, AR_E_INVALID, "protocol_error", "frame payload is not JSON: %s at byte %d",
                     jerr.text, jerr.position);
        return decoder_fail(d);
    }
    if (!json_is_object(payload)) {
        json_decref(payload);
        ar_error_set(err, AR_E_INVALID, "protocol_error", "frame payload is not a JSON object");
        return decoder_fail(d);
    }
    out->type = (frame_type)d->buf[3];
    out->request_id = get_be32(d->buf + 4);
    out->payload = payload;

    size_t used = FRAME_HEADER_SIZE + plen;
    memmove(d->buf, d->buf + used, d->len - used);
    d->len -= used;
    if (d->len == 0 && d->cap > DECODER_KEEP_CAP) {
        free(d->buf);
        d->buf = NULL;
        d->cap = 0;
    }
    return AR_OK;
}

/* Wait until fd is ready for events; EINTR is retried. */
static int wait_fd(int fd, short events)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int r = poll(&pfd, 1, -1);
        if (r >= 0)
            return AR_OK;
        if (errno != EINTR)
            return AR_E_IO;
    }
}

int frame_write_fd(int fd, frame_type type, uint32_t request_id, const json_t *payload,
                   size_t max_payload, ar_error *err)
{
    uint8_t *buf;
    size_t len, off = 0;
    int rc = frame_encode(type, request_id, payload, max_payload, &buf, &len, err);
    if (rc != AR_OK)
        return rc;

    int use_send = 1; /* MSG_NOSIGNAL: a closed peer is EPIPE, not a fatal SIGPIPE */
    while (off < len) {
        ssize_t w = use_send ? send(fd, buf + off, len - off, MSG_NOSIGNAL)
                             : write(fd, buf + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && use_send && errno == ENOTSOCK) {
            use_send = 0;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT) == AR_OK)
                continue;
        }
        int e = errno;
        free(buf);
        if (e == EPIPE || e == ECONNRESET)
            return ar_error_set(err, AR_E_CLOSED, "closed", "peer closed the connection");
        return ar_error_set(err, AR_E_IO, "io_error", "writing a frame: %s", strerror(e));
    }
    free(buf);
    return AR_OK;
}

int frame_read_fd(int fd, frame_decoder *d, frame *out, ar_error *err)
{
    uint8_t *chunk = NULL;
    int rc;

    for (;;) {
        rc = frame_decoder_next(d, out, err);
        if (rc != AR_E_NOTFOUND)
            break;
        if (!chunk && !(chunk = malloc(READ_CHUNK))) {
            rc = ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory");
            break;
        }
        ssize_t r = read(fd, chunk, READ_CHUNK);
        if (r == 0) {
            rc = ar_error_set(err, AR_E_CLOSED, "closed",
                              d->len ? "peer closed the connection in the middle of a frame"
                                     : "peer closed the connection");
            break;
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_fd(fd, POLLIN) == AR_OK)
                continue;
            if (errno == ECONNRESET) {
                rc = ar_error_set(err, AR_E_CLOSED, "closed", "peer reset the connection");
                break;
            }
            rc = ar_error_set(err, AR_E_IO, "io_error", "reading a frame: %s", strerror(errno));
            break;
        }
        if (frame_decoder_feed(d, chunk, (size_t)r) != AR_OK) {
            rc = ar_error_set(err, AR_E_NOMEM, "nomem", "out of memory buffering a frame");
            break;
        }
    }
    free(chunk);
    return rc;
}

static const char *const class_names[] = {
    [AIORUN_E_RETRYABLE] = "retryable",
    [AIORUN_E_RATE_LIMITED] = "rate_limited",
    [AIORUN_E_TIMEOUT] = "timeout",
    [AIORUN_E_AUTH] = "auth",
    [AIORUN_E_INVALID] = "invalid",
    [AIORUN_E_NOT_FOUND] = "not_found",
    [AIORUN_E_CONFLICT] = "conflict",
    [AIORUN_E_PERMANENT] = "permanent",
    [AIORUN_E_PLUGIN_CRASHED] = "plugin_crashed",
};

const char *frame_class_name(int aiorun_status_value)
{
    if (aiorun_status_value <= 0 ||
        aiorun_status_value >= (int)(sizeof class_names / sizeof class_names[0]))
        return NULL;
    return class_names[aiorun_status_value];
}

int frame_class_from_name(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 1; i < sizeof class_names / sizeof class_names[0]; i++)
        if (strcmp(class_names[i], name) == 0)
            return (int)i;
    return -1;
}
