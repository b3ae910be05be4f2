/*
 * frame.h - the wire format between the daemon and a sandbox host process.
 *
 * A stream of frames over a SOCK_STREAM socketpair (a stream, not SEQPACKET, because results of
 * several MiB exceed a datagram's limit). Each frame is a 12-byte header followed by a JSON
 * payload:
 *   bytes 0-1  magic "AR"
 *   byte  2    protocol version (FRAME_PROTOCOL_VERSION)
 *   byte  3    type (frame_type)
 *   bytes 4-7  request id, big-endian (0 for unsolicited frames such as LOG)
 *   bytes 8-11 payload length, big-endian, at most the decoder's max_payload
 * The decoder is incremental: bytes may arrive one at a time or many frames at once. Any
 * violation (bad magic, other version, unknown type, oversized length, payload that is not a
 * JSON object) is a protocol error: the peer is not to be trusted any further.
 */
#ifndef FRAME_H
#define FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "ar.h"

#define FRAME_PROTOCOL_VERSION 1
#define FRAME_HEADER_SIZE 12
#define FRAME_DEFAULT_MAX_PAYLOAD (16u * 1024u * 1024u)

typedef enum frame_type {
    FRAME_HELLO = 1,      /* host -> daemon: plugin loaded; payload = descriptor (see below) */
    FRAME_REFUSED = 2,    /* host -> daemon: plugin refused; {"error": code, "message": text} */
    FRAME_INIT = 3,       /* daemon -> host: {"connector", "config": {...}, "secrets": {...}} */
    FRAME_READY = 4,      /* host -> daemon: init succeeded, {} */
    FRAME_INVOKE = 5,     /* daemon -> host: {"action", "input": <json>, "idempotency_key",
                             "deadline_ms" (epoch ms), "attempt"} */
    FRAME_LOOKUP = 6,     /* daemon -> host: {"action", "idempotency_key", "deadline_ms"} */
    FRAME_RESULT = 7,     /* host -> daemon: {"ok": true, "result": <json>} or
                             {"ok": false, "class": "timeout", "message": "..."}; either with
                             "http_status" (int) and "retry_after_ms" (int) of the last HTTP
                             response the plugin received during the call, each omitted when
                             there was none; and with "cost": {"USD": 0.012, "tokens": 340}
                             (unit -> amount, from set_cost) when the plugin reported any */
    FRAME_LOG = 8,        /* host -> daemon: {"level": "info", "message": "..."} */
    FRAME_SHUTDOWN = 9    /* daemon -> host: call fini and exit 0, {} */
} frame_type;

/* HELLO payload: {"abi": {"major": 1, "minor": 2}, "name", "version", "description",
 * "config_schema": {...}, "lookup": bool, "actions": [{"name", "summary", "input_schema": {...},
 * "effect": "read"|"write"|"irreversible", "idempotency": "none"|"native"|"lookup",
 * "cacheable": bool}]} */

typedef struct frame {
    frame_type type;
    uint32_t request_id;
    json_t *payload;      /* owned by the frame: free with frame_clear */
} frame;

void frame_clear(frame *f);

/* Encode one frame into a malloc'd buffer (*out owned by the caller, free()). */
int frame_encode(frame_type type, uint32_t request_id, const json_t *payload,
                 size_t max_payload, uint8_t **out, size_t *out_len, ar_error *err);

/* Finish a frame whose payload text the caller wrote itself (it must be a compact JSON object,
 * as frame_encode would write it): buf holds FRAME_HEADER_SIZE bytes of room and then the text,
 * len bytes in all. Writes the header into that room; the bytes are then frame_encode's.
 * AR_E_INVALID (protocol_error / frame_too_large, as frame_encode) and buf untouched otherwise.
 * Nothing is allocated; buf stays the caller's. */
int frame_seal(uint8_t *buf, size_t len, frame_type type, uint32_t request_id, size_t max_payload,
               ar_error *err);

/* Incremental decoder; embed it and frame_decoder_init/fini. */
typedef struct frame_decoder {
    size_t max_payload;
    uint8_t *buf;
    size_t len, cap;
    int failed;           /* sticky after a protocol error */
} frame_decoder;

void frame_decoder_init(frame_decoder *d, size_t max_payload);
void frame_decoder_fini(frame_decoder *d);
/* Append received bytes. AR_OK or AR_E_NOMEM. */
int frame_decoder_feed(frame_decoder *d, const void *data, size_t n);
/* Take the next complete frame: AR_OK (frame filled, caller frees with frame_clear),
 * AR_E_NOTFOUND (need more bytes), AR_E_INVALID (protocol error, code "protocol_error",
 * sticky). */
int frame_decoder_next(frame_decoder *d, frame *out, ar_error *err);

/* Blocking helpers for the host side: write a whole frame; read until one frame is complete.
 * AR_E_CLOSED on EOF. */
int frame_write_fd(int fd, frame_type type, uint32_t request_id, const json_t *payload,
                   size_t max_payload, ar_error *err);
int frame_read_fd(int fd, frame_decoder *d, frame *out, ar_error *err);

/* Names for enums used in payloads ("timeout" <-> AIORUN_E_TIMEOUT, ...). Return NULL/-1
 * for unknown values. */
const char *frame_class_name(int aiorun_status_value);
int frame_class_from_name(const char *name);

#endif
