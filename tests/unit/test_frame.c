/* test_frame.c - the daemon <-> host wire format: encoding, the incremental decoder against
 * adversarial input, and the blocking fd helpers over a real socketpair. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_main.h"

#include "aiorun/plugin.h"
#include "frame.h"

/* Encode one frame (asserting success); *len gets its size. Free the result. */
static uint8_t *encode(frame_type type, uint32_t id, json_t *payload, size_t *len)
{
    uint8_t *buf = NULL;
    ar_error err;
    assert_int_equal(frame_encode(type, id, payload, 0, &buf, len, &err), AR_OK);
    json_decref(payload);
    return buf;
}

/* A raw header with the given fields (for frames the encoder would refuse to make). */
static void raw_header(uint8_t *h, uint8_t m0, uint8_t m1, uint8_t version, uint8_t type,
                       uint32_t id, uint32_t len)
{
    h[0] = m0;
    h[1] = m1;
    h[2] = version;
    h[3] = type;
    h[4] = (uint8_t)(id >> 24);
    h[5] = (uint8_t)(id >> 16);
    h[6] = (uint8_t)(id >> 8);
    h[7] = (uint8_t)id;
    h[8] = (uint8_t)(len >> 24);
    h[9] = (uint8_t)(len >> 16);
    h[10] = (uint8_t)(len >> 8);
    h[11] = (uint8_t)len;
}

/* Feed a raw frame (header fields + payload text) and expect a protocol error from next. */
static void expect_invalid(uint8_t version, uint8_t type, const char *m, const char *payload,
                           const char *message_part)
{
    frame_decoder d;
    frame f;
    ar_error err;
    uint8_t h[FRAME_HEADER_SIZE];
    size_t plen = strlen(payload);

    frame_decoder_init(&d, 0);
    raw_header(h, (uint8_t)m[0], (uint8_t)m[1], version, type, 7, (uint32_t)plen);
    assert_int_equal(frame_decoder_feed(&d, h, sizeof h), AR_OK);
    assert_int_equal(frame_decoder_feed(&d, payload, plen), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_INVALID);
    assert_string_equal(err.code, "protocol_error");
    assert_non_null(strstr(err.message, message_part));
    assert_null(f.payload);
    frame_decoder_fini(&d);
}

static void test_roundtrip(void **state)
{
    (void)state;
    size_t len;
    json_t *payload = json_pack("{s:s, s:i, s:[i,i], s:{s:b}}", "name", "caf\xc3\xa9", "n", 42,
                                "list", 1, 2, "nested", "flag", 1);
    json_t *expect = json_deep_copy(payload);
    uint8_t *buf = encode(FRAME_RESULT, 0xdeadbeef, payload, &len);

    assert_true(len > FRAME_HEADER_SIZE);
    assert_memory_equal(buf, "AR", 2);
    assert_int_equal(buf[2], FRAME_PROTOCOL_VERSION);
    assert_int_equal(buf[3], FRAME_RESULT);
    assert_int_equal(buf[4], 0xde);
    assert_int_equal(buf[7], 0xef);

    frame_decoder d;
    frame f;
    ar_error err;
    frame_decoder_init(&d, 0);
    assert_int_equal(frame_decoder_feed(&d, buf, len), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_OK);
    assert_int_equal(f.type, FRAME_RESULT);
    assert_int_equal(f.request_id, 0xdeadbeef);
    assert_true(json_equal(f.payload, expect));
    frame_clear(&f);
    assert_null(f.payload);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_NOTFOUND);
    frame_decoder_fini(&d);
    json_decref(expect);
    free(buf);

    /* a NULL payload is an empty object */
    buf = encode(FRAME_SHUTDOWN, 0, NULL, &len);
    assert_int_equal(len, FRAME_HEADER_SIZE + 2);
    assert_memory_equal(buf + FRAME_HEADER_SIZE, "{}", 2);
    free(buf);
}

/* frame_seal over text the caller wrote gives frame_encode's bytes, and refuses alike. */
static void test_seal_matches_encode(void **state)
{
    (void)state;
    json_t *payload = json_pack("{s:s, s:{s:I}}", "action", "caf\xc3\xa9", "input", "n", (json_int_t)-7);
    uint8_t *enc;
    size_t enc_len;
    ar_error err;
    assert_int_equal(frame_encode(FRAME_INVOKE, 0x01020304, payload, 0, &enc, &enc_len, &err), AR_OK);
    const char *text = "{\"action\":\"caf\xc3\xa9\",\"input\":{\"n\":-7}}";
    size_t len = FRAME_HEADER_SIZE + strlen(text);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    memcpy(buf + FRAME_HEADER_SIZE, text, strlen(text));
    assert_int_equal(frame_seal(buf, len, FRAME_INVOKE, 0x01020304, 0, &err), AR_OK);
    assert_int_equal(len, enc_len);
    assert_memory_equal(buf, enc, len);
    assert_int_equal(frame_seal(buf, len, (frame_type)99, 1, 0, &err), AR_E_INVALID);
    assert_int_equal(frame_seal(buf, len, FRAME_INVOKE, 1, strlen(text) - 1, &err), AR_E_INVALID);
    assert_string_equal(err.code, "frame_too_large");
    uint8_t *enc2;
    assert_int_equal(frame_encode(FRAME_INVOKE, 1, payload, strlen(text) - 1, &enc2, &enc_len, &err),
                     AR_E_INVALID);
    assert_string_equal(err.code, "frame_too_large");
    assert_int_equal(frame_seal(buf, FRAME_HEADER_SIZE - 1, FRAME_INVOKE, 1, 0, &err), AR_E_INVALID);
    free(buf);
    free(enc);
    json_decref(payload);
}

static void test_encode_refuses(void **state)
{
    (void)state;
    uint8_t *buf = (uint8_t *)"x";
    size_t len = 1;
    ar_error err;
    json_t *arr = json_array();
    json_t *big = json_pack("{s:s}", "data", "0123456789012345678901234567890123456789");

    assert_int_equal(frame_encode(FRAME_LOG, 0, arr, 0, &buf, &len, &err), AR_E_INVALID);
    assert_null(buf);
    assert_int_equal(frame_encode((frame_type)42, 0, NULL, 0, &buf, &len, &err), AR_E_INVALID);
    assert_int_equal(frame_encode(FRAME_LOG, 0, big, 16, &buf, &len, &err), AR_E_INVALID);
    assert_string_equal(err.code, "frame_too_large");
    assert_null(buf);
    assert_int_equal(len, 0);
    json_decref(arr);
    json_decref(big);
}

static void test_byte_at_a_time(void **state)
{
    (void)state;
    size_t l1, l2;
    uint8_t *a = encode(FRAME_HELLO, 1, json_pack("{s:s}", "name", "first"), &l1);
    uint8_t *b = encode(FRAME_LOG, 0, json_pack("{s:s, s:s}", "level", "info", "message", "second"), &l2);
    uint8_t *all = malloc(l1 + l2);
    memcpy(all, a, l1);
    memcpy(all + l1, b, l2);

    frame_decoder d;
    frame f;
    ar_error err;
    int got = 0;
    frame_decoder_init(&d, 0);
    for (size_t i = 0; i < l1 + l2; i++) {
        assert_int_equal(frame_decoder_feed(&d, all + i, 1), AR_OK);
        int rc = frame_decoder_next(&d, &f, &err);
        if (i + 1 == l1 || i + 1 == l1 + l2) {
            assert_int_equal(rc, AR_OK);
            got++;
            if (got == 1) {
                assert_int_equal(f.type, FRAME_HELLO);
                assert_string_equal(json_string_value(json_object_get(f.payload, "name")), "first");
            } else {
                assert_int_equal(f.type, FRAME_LOG);
                assert_string_equal(json_string_value(json_object_get(f.payload, "message")), "second");
            }
            frame_clear(&f);
        } else {
            assert_int_equal(rc, AR_E_NOTFOUND);
        }
    }
    assert_int_equal(got, 2);
    frame_decoder_fini(&d);
    free(a);
    free(b);
    free(all);
}

static void test_several_frames_one_feed(void **state)
{
    (void)state;
    size_t lens[3], total = 0;
    uint8_t *parts[3], *all;
    for (int i = 0; i < 3; i++) {
        parts[i] = encode(FRAME_RESULT, (uint32_t)(100 + i), json_pack("{s:i}", "i", i), &lens[i]);
        total += lens[i];
    }
    all = malloc(total);
    for (size_t i = 0, o = 0; i < 3; o += lens[i], i++)
        memcpy(all + o, parts[i], lens[i]);

    frame_decoder d;
    frame f;
    ar_error err;
    frame_decoder_init(&d, 0);
    assert_int_equal(frame_decoder_feed(&d, all, total), AR_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(frame_decoder_next(&d, &f, &err), AR_OK);
        assert_int_equal(f.request_id, 100 + i);
        assert_int_equal(json_integer_value(json_object_get(f.payload, "i")), i);
        frame_clear(&f);
    }
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_NOTFOUND);
    frame_decoder_fini(&d);
    for (int i = 0; i < 3; i++)
        free(parts[i]);
    free(all);
}

static void test_truncated_frame(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = encode(FRAME_INVOKE, 9, json_pack("{s:s, s:{}}", "action", "ok", "input"), &len);
    frame_decoder d;
    frame f;
    ar_error err;
    frame_decoder_init(&d, 0);

    /* half a header, then the header and part of the payload: need more both times */
    assert_int_equal(frame_decoder_feed(&d, buf, 5), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_NOTFOUND);
    assert_int_equal(frame_decoder_feed(&d, buf + 5, len - 5 - 3), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_NOTFOUND);
    assert_int_equal(frame_decoder_feed(&d, buf + len - 3, 3), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_OK);
    assert_int_equal(f.type, FRAME_INVOKE);
    assert_int_equal(f.request_id, 9);
    frame_clear(&f);
    frame_decoder_fini(&d);
    free(buf);
}

static void test_oversized_length_refused_before_buffering(void **state)
{
    (void)state;
    frame_decoder d;
    frame f;
    ar_error err;
    uint8_t h[FRAME_HEADER_SIZE];
    static uint8_t junk[1 << 16];
    memset(junk, '{', sizeof junk);

    frame_decoder_init(&d, 1024);
    raw_header(h, 'A', 'R', FRAME_PROTOCOL_VERSION, FRAME_RESULT, 1, 0x40000000u);
    assert_int_equal(frame_decoder_feed(&d, h, sizeof h), AR_OK);
    /* whatever follows the bad header is not kept */
    for (int i = 0; i < 16; i++)
        assert_int_equal(frame_decoder_feed(&d, junk, sizeof junk), AR_OK);
    assert_true(d.len <= FRAME_HEADER_SIZE);
    assert_true(d.cap < 8192);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_INVALID);
    assert_non_null(strstr(err.message, "exceeds the limit of 1024 bytes"));
    frame_decoder_fini(&d);

    /* the same when the header and the flood come in one feed */
    uint8_t *both = malloc(sizeof h + sizeof junk);
    memcpy(both, h, sizeof h);
    memcpy(both + sizeof h, junk, sizeof junk);
    frame_decoder_init(&d, 1024);
    assert_int_equal(frame_decoder_feed(&d, both, sizeof h + sizeof junk), AR_OK);
    assert_true(d.len <= FRAME_HEADER_SIZE);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_INVALID);
    frame_decoder_fini(&d);
    free(both);

    /* exactly the limit is fine */
    frame_decoder_init(&d, 16);
    raw_header(h, 'A', 'R', FRAME_PROTOCOL_VERSION, FRAME_READY, 0, 16);
    assert_int_equal(frame_decoder_feed(&d, h, sizeof h), AR_OK);
    assert_int_equal(frame_decoder_feed(&d, "{\"k\":\"12345678\"}", 16), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_OK);
    frame_clear(&f);
    frame_decoder_fini(&d);
}

static void test_wrong_magic(void **state)
{
    (void)state;
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "XR", "{}", "bad frame magic");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "ar", "{}", "bad frame magic");
}

static void test_wrong_version(void **state)
{
    (void)state;
    expect_invalid(FRAME_PROTOCOL_VERSION + 1, FRAME_LOG, "AR", "{}", "protocol version 2");
    expect_invalid(0, FRAME_LOG, "AR", "{}", "protocol version 0");
}

static void test_unknown_type(void **state)
{
    (void)state;
    expect_invalid(FRAME_PROTOCOL_VERSION, 0, "AR", "{}", "unknown frame type 0");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_SHUTDOWN + 1, "AR", "{}", "unknown frame type");
    expect_invalid(FRAME_PROTOCOL_VERSION, 255, "AR", "{}", "unknown frame type 255");
}

static void test_payload_not_json_or_not_object(void **state)
{
    (void)state;
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "{\"a\":", "not JSON");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "", "not JSON");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "{\"a\":\"\xff\"}", "not JSON");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "{\"a\":1,\"a\":2}", "not JSON");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "[1,2]", "not a JSON object");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "\"text\"", "not JSON");
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_LOG, "AR", "{} {}", "not JSON");
}

static void test_deep_nesting_refused(void **state)
{
    (void)state;
    enum { DEPTH = 100000 };
    char *text = malloc(2 * DEPTH + 16);
    size_t o = 0;
    o += (size_t)sprintf(text, "{\"a\":");
    for (int i = 0; i < DEPTH; i++)
        text[o++] = '[';
    for (int i = 0; i < DEPTH; i++)
        text[o++] = ']';
    text[o++] = '}';
    text[o] = '\0';
    expect_invalid(FRAME_PROTOCOL_VERSION, FRAME_RESULT, "AR", text, "not JSON");
    free(text);
}

static void test_sticky_failure(void **state)
{
    (void)state;
    frame_decoder d;
    frame f;
    ar_error err;
    size_t l1, l2;
    uint8_t *good = encode(FRAME_READY, 0, NULL, &l1);
    uint8_t *after = encode(FRAME_READY, 0, NULL, &l2);
    uint8_t bad[FRAME_HEADER_SIZE + 2];
    raw_header(bad, 'Z', 'Z', FRAME_PROTOCOL_VERSION, FRAME_READY, 0, 2);
    memcpy(bad + FRAME_HEADER_SIZE, "{}", 2);

    /* a good frame, a bad one and a good one in one feed: the first still comes out */
    uint8_t *all = malloc(l1 + sizeof bad + l2);
    memcpy(all, good, l1);
    memcpy(all + l1, bad, sizeof bad);
    memcpy(all + l1 + sizeof bad, after, l2);
    frame_decoder_init(&d, 0);
    assert_int_equal(frame_decoder_feed(&d, all, l1 + sizeof bad + l2), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_OK);
    assert_int_equal(f.type, FRAME_READY);
    frame_clear(&f);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_INVALID);
    assert_true(d.failed);
    /* nothing is accepted any more, not even a valid frame */
    assert_int_equal(frame_decoder_feed(&d, good, l1), AR_OK);
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_INVALID);
    assert_string_equal(err.code, "protocol_error");
    assert_int_equal(frame_decoder_next(&d, &f, &err), AR_E_INVALID);
    assert_null(f.payload);
    frame_decoder_fini(&d);
    free(good);
    free(after);
    free(all);
}

static void test_class_names(void **state)
{
    (void)state;
    static const char *const names[] = {NULL, "retryable", "rate_limited", "timeout", "auth",
                                        "invalid", "not_found", "conflict", "permanent",
                                        "plugin_crashed"};
    for (int i = 1; i <= AIORUN_E_PLUGIN_CRASHED; i++) {
        assert_string_equal(frame_class_name(i), names[i]);
        assert_int_equal(frame_class_from_name(names[i]), i);
    }
    assert_int_equal(frame_class_from_name("timeout"), AIORUN_E_TIMEOUT);
    assert_null(frame_class_name(0));
    assert_null(frame_class_name(-1));
    assert_null(frame_class_name(10));
    assert_int_equal(frame_class_from_name("ok"), -1);
    assert_int_equal(frame_class_from_name("TIMEOUT"), -1);
    assert_int_equal(frame_class_from_name(NULL), -1);
}

/* ---- fd helpers ---- */

#define BIG_BYTES (4u * 1024u * 1024u)

typedef struct writer_arg {
    int fd;
    int rc1, rc2;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *w = p;
    char *data = malloc(BIG_BYTES + 1);
    memset(data, 'x', BIG_BYTES);
    data[BIG_BYTES] = '\0';
    data[0] = 'a';
    data[BIG_BYTES - 1] = 'z';
    json_t *payload = json_pack("{s:b, s:{s:s}}", "ok", 1, "result", "data", data);
    free(data);
    w->rc1 = frame_write_fd(w->fd, FRAME_RESULT, 77, payload, 0, NULL);
    json_decref(payload);
    payload = json_pack("{s:s}", "after", "big");
    w->rc2 = frame_write_fd(w->fd, FRAME_LOG, 0, payload, 0, NULL);
    json_decref(payload);
    close(w->fd);
    return NULL;
}

/* Read the big frame and the small one from fd, then EOF. */
static void read_big_then_eof(int fd)
{
    frame_decoder d;
    frame f;
    ar_error err;
    frame_decoder_init(&d, 0);
    assert_int_equal(frame_read_fd(fd, &d, &f, &err), AR_OK);
    assert_int_equal(f.type, FRAME_RESULT);
    assert_int_equal(f.request_id, 77);
    const char *s = json_string_value(json_object_get(json_object_get(f.payload, "result"), "data"));
    assert_non_null(s);
    assert_int_equal(strlen(s), BIG_BYTES);
    assert_int_equal(s[0], 'a');
    assert_int_equal(s[BIG_BYTES - 1], 'z');
    frame_clear(&f);
    assert_int_equal(frame_read_fd(fd, &d, &f, &err), AR_OK);
    assert_int_equal(f.type, FRAME_LOG);
    assert_string_equal(json_string_value(json_object_get(f.payload, "after")), "big");
    frame_clear(&f);
    assert_int_equal(frame_read_fd(fd, &d, &f, &err), AR_E_CLOSED);
    frame_decoder_fini(&d);
}

static void test_fd_roundtrip_4mib_socketpair(void **state)
{
    (void)state;
    int sv[2];
    pthread_t t;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    writer_arg w = {.fd = sv[1]};
    assert_int_equal(pthread_create(&t, NULL, writer, &w), 0);
    read_big_then_eof(sv[0]);
    pthread_join(t, NULL);
    assert_int_equal(w.rc1, AR_OK);
    assert_int_equal(w.rc2, AR_OK);
    close(sv[0]);
}

static void test_fd_roundtrip_pipe(void **state)
{
    (void)state;
    int pfd[2];
    pthread_t t;
    assert_int_equal(pipe(pfd), 0);
    writer_arg w = {.fd = pfd[1]};  /* not a socket: frame_write_fd falls back to write() */
    assert_int_equal(pthread_create(&t, NULL, writer, &w), 0);
    read_big_then_eof(pfd[0]);
    pthread_join(t, NULL);
    assert_int_equal(w.rc1, AR_OK);
    assert_int_equal(w.rc2, AR_OK);
    close(pfd[0]);
}

static void test_fd_eof_mid_frame_and_closed_peer(void **state)
{
    (void)state;
    int sv[2];
    size_t len;
    frame_decoder d;
    frame f;
    ar_error err;
    uint8_t *buf = encode(FRAME_READY, 0, json_pack("{s:s}", "k", "v"), &len);

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(write(sv[1], buf, len - 2), (ssize_t)(len - 2));
    close(sv[1]);
    frame_decoder_init(&d, 0);
    assert_int_equal(frame_read_fd(sv[0], &d, &f, &err), AR_E_CLOSED);
    assert_non_null(strstr(err.message, "middle of a frame"));
    frame_decoder_fini(&d);

    /* writing to a closed peer is AR_E_CLOSED, not a SIGPIPE */
    assert_int_equal(frame_write_fd(sv[0], FRAME_LOG, 0, NULL, 0, &err), AR_E_CLOSED);
    close(sv[0]);
    free(buf);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_roundtrip),
    cmocka_unit_test(test_seal_matches_encode),
    cmocka_unit_test(test_encode_refuses),
    cmocka_unit_test(test_byte_at_a_time),
    cmocka_unit_test(test_several_frames_one_feed),
    cmocka_unit_test(test_truncated_frame),
    cmocka_unit_test(test_oversized_length_refused_before_buffering),
    cmocka_unit_test(test_wrong_magic),
    cmocka_unit_test(test_wrong_version),
    cmocka_unit_test(test_unknown_type),
    cmocka_unit_test(test_payload_not_json_or_not_object),
    cmocka_unit_test(test_deep_nesting_refused),
    cmocka_unit_test(test_sticky_failure),
    cmocka_unit_test(test_class_names),
    cmocka_unit_test(test_fd_roundtrip_4mib_socketpair),
    cmocka_unit_test(test_fd_roundtrip_pipe),
    cmocka_unit_test(test_fd_eof_mid_frame_and_closed_peer),
};

AR_TEST_MAIN(tests, NULL, NULL)
