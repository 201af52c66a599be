/*
 * protocol.h — the GoldFinch wire protocol: messages (goldfinch.proto, compiled by protoc-c
 * into goldfinch.pb-c.h) and their framing. protocol/README.md is the reference.
 *
 * A frame is a little-endian u32 byte length, then that many bytes of one serialized
 * Request (client to server) or Response (server to client). Lengths above the receiver's
 * maximum are refused before any byte of the body is buffered.
 *
 * Functions return 0 or -errno. Thread-safety: a proto_reader belongs to one thread; the
 * pack/unpack helpers keep no state.
 */
#ifndef GF_PROTOCOL_H
#define GF_PROTOCOL_H

#include "goldfinch.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION_MAJOR 1
#define PROTO_VERSION_MINOR 3
#define PROTO_HEADER_BYTES 4
#define PROTO_DEFAULT_MAX_FRAME (16u << 20)

typedef Goldfinch__V1__Request proto_request;
typedef Goldfinch__V1__Response proto_response;

/* Incremental frame reader over a byte stream: feed what arrives, take whole frames out. */
typedef struct proto_reader {
	uint8_t *buf;
	size_t len, cap, start;
	uint32_t max_frame;
} proto_reader;

void proto_reader_init(proto_reader *r, uint32_t max_frame);
void proto_reader_free(proto_reader *r);
/* Appends n bytes (copied). -ENOMEM. */
int proto_reader_feed(proto_reader *r, const void *data, size_t n);
/* Space to receive into directly (at least `want` bytes); commit what was written with
 * proto_reader_commit. Saves a copy on the server's read path. */
int proto_reader_space(proto_reader *r, size_t want, uint8_t **dst, size_t *avail);
void proto_reader_commit(proto_reader *r, size_t n);
/* 1 and the body of the next whole frame (valid until the next call on r), 0 when more
 * bytes are needed, -EMSGSIZE when the announced length exceeds max_frame (the stream
 * cannot be resynchronised: drop the connection after answering). */
int proto_reader_next(proto_reader *r, const uint8_t **body, uint32_t *len);
/* Bytes buffered but not yet returned as frames. */
size_t proto_reader_pending(const proto_reader *r);

/* Serializes a message into a new malloc'd frame (header included): *out, *out_len. */
int proto_frame_request(const proto_request *m, uint8_t **out, size_t *out_len);
int proto_frame_response(const proto_response *m, uint8_t **out, size_t *out_len);

/* Parses a frame body; NULL if it is not a valid message. Free with proto_*_free. */
proto_request *proto_request_parse(const uint8_t *body, size_t len);
proto_response *proto_response_parse(const uint8_t *body, size_t len);
void proto_request_free(proto_request *m);   /* NULL-safe */
void proto_response_free(proto_response *m); /* NULL-safe */

/* Name of an error code, e.g. "BAD_REQUEST". */
const char *proto_error_name(Goldfinch__V1__ErrorCode code);

#endif
