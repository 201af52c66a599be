/*
 * fuzz_frame.c — the frame decoder of protocol/framing.c (proto_reader), as the daemon's
 * loop and the client library drive it: bytes arrive in pieces of any size, through
 * proto_reader_feed or proto_reader_space + commit, and whole frames are taken out and
 * parsed as a Request (the server side) and a Response (the client side).
 *
 * Input: byte 0 picks the frame limit (64 << (b % 16) bytes) and byte 1 the seed of the
 * piece sizes; the rest is the byte stream.
 *
 * Checks: a frame's body lies in the bytes fed, in order, with the length its header gives,
 * never above the limit; the bytes of the frames taken plus the bytes pending equal the
 * bytes fed (nothing lost or invented); a parsed Request re-framed by proto_frame_request
 * reads back through a fresh reader as one frame of the same length.
 */
#include "fuzz_common.h"
#include "fuzz_proto.h"
#include "protocol.h"

#include <errno.h>
#include <string.h>

static void check_reframe(const proto_request *req)
{
	proto_reader r;
	uint8_t *frame;
	size_t flen;
	const uint8_t *body;
	uint32_t blen;

	if (proto_frame_request(req, &frame, &flen))
		return; /* -ENOMEM / over 4 GiB: not for inputs of this size */
	proto_reader_init(&r, 0);
	FUZZ_CHECK(proto_reader_feed(&r, frame, flen) == 0, "feed of a re-framed request");
	FUZZ_CHECK(proto_reader_next(&r, &body, &blen) == 1 && blen + PROTO_HEADER_BYTES == flen,
		   "re-framed request of %zu bytes does not read back", flen);
	proto_request *again = proto_request_parse(body, blen);
	if (!again && fuzz_has_unknown(&req->base))
		goto free_reader; /* the protobuf-c quirk of fuzz_proto.h */
	FUZZ_CHECK(again, "re-framed request does not parse");
	FUZZ_CHECK(again->id == req->id && again->body_case == req->body_case,
		   "re-framed request changed id or body");
	proto_request_free(again);
	FUZZ_CHECK(proto_reader_pending(&r) == 0, "bytes left after the one frame");
free_reader:
	proto_reader_free(&r);
	free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	proto_reader r;
	uint32_t max_frame, seed;
	size_t fed = 0, taken = 0, off;

	if (size < 2)
		return 0;
	max_frame = 64u << (data[0] % 16);
	seed = data[1] * 2654435761u + 1;
	data += 2;
	size -= 2;
	proto_reader_init(&r, max_frame);
	off = 0;
	while (off < size) {
		/* Piece sizes from a small LCG: 1..257 bytes, sometimes all the rest at once. */
		size_t n;

		seed = seed * 1103515245u + 12345u;
		n = (seed >> 16) % 8 == 0 ? size - off : 1 + (seed >> 20) % 257;
		if (n > size - off)
			n = size - off;
		if (seed & 0x8000) {
			FUZZ_CHECK(proto_reader_feed(&r, data + off, n) == 0, "feed of %zu bytes", n);
		} else {
			uint8_t *dst;
			size_t avail;

			FUZZ_CHECK(proto_reader_space(&r, n, &dst, &avail) == 0 && avail >= n,
				   "space for %zu bytes", n);
			memcpy(dst, data + off, n);
			proto_reader_commit(&r, n);
		}
		fed += n;
		off += n;
		for (;;) {
			const uint8_t *body;
			uint32_t len;
			int rc = proto_reader_next(&r, &body, &len);

			if (rc == 0)
				break;
			if (rc < 0) {
				/* The announced length is over the limit: the stream ends here. */
				FUZZ_CHECK(rc == -EMSGSIZE, "proto_reader_next: %d", rc);
				FUZZ_CHECK(fuzz_get32(data + taken) > max_frame,
					   "-EMSGSIZE for a frame within the limit");
				goto done;
			}
			FUZZ_CHECK(len <= max_frame, "frame of %u bytes over the %u limit", len,
				   max_frame);
			FUZZ_CHECK(taken + PROTO_HEADER_BYTES + len <= fed, "frame past the bytes fed");
			FUZZ_CHECK(fuzz_get32(data + taken) == len, "frame length differs from its header");
			FUZZ_CHECK(memcmp(body, data + taken + PROTO_HEADER_BYTES, len) == 0,
				   "frame body differs from the bytes fed");
			taken += PROTO_HEADER_BYTES + (size_t)len;

			proto_request *req = proto_request_parse(body, len);
			if (req) {
				check_reframe(req);
				proto_request_free(req);
			}
			proto_response_free(proto_response_parse(body, len));
		}
		FUZZ_CHECK(taken + proto_reader_pending(&r) == fed,
			   "%zu taken + %zu pending != %zu fed", taken, proto_reader_pending(&r), fed);
	}
done:
	proto_reader_free(&r);
	return 0;
}
