/*
 * framing.c — see protocol.h.
 */
#include "protocol.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void proto_reader_init(proto_reader *r, uint32_t max_frame)
{
	memset(r, 0, sizeof(*r));
	r->max_frame = max_frame ? max_frame : PROTO_DEFAULT_MAX_FRAME;
}

void proto_reader_free(proto_reader *r)
{
	if (!r)
		return;
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

/* Makes room for `want` more bytes after len, compacting consumed bytes first. */
static int reserve(proto_reader *r, size_t want)
{
	if (r->start) {
		memmove(r->buf, r->buf + r->start, r->len - r->start);
		r->len -= r->start;
		r->start = 0;
	}
	if (r->cap - r->len >= want)
		return 0;
	size_t cap = r->cap ? r->cap : 4096;
	while (cap - r->len < want)
		cap *= 2;
	uint8_t *b = realloc(r->buf, cap);
	if (!b)
		return -ENOMEM;
	r->buf = b;
	r->cap = cap;
	return 0;
}

int proto_reader_feed(proto_reader *r, const void *data, size_t n)
{
	int rc = reserve(r, n);
	if (rc)
		return rc;
	memcpy(r->buf + r->len, data, n);
	r->len += n;
	return 0;
}

int proto_reader_space(proto_reader *r, size_t want, uint8_t **dst, size_t *avail)
{
	int rc = reserve(r, want);
	if (rc)
		return rc;
	*dst = r->buf + r->len;
	*avail = r->cap - r->len;
	return 0;
}

void proto_reader_commit(proto_reader *r, size_t n)
{
	r->len += n;
}

int proto_reader_next(proto_reader *r, const uint8_t **body, uint32_t *len)
{
	size_t have = r->len - r->start;
	if (have < PROTO_HEADER_BYTES)
		return 0;
	const uint8_t *p = r->buf + r->start;
	uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		     (uint32_t)p[3] << 24;
	if (n > r->max_frame)
		return -EMSGSIZE;
	if (have < PROTO_HEADER_BYTES + (size_t)n)
		return 0;
	*body = p + PROTO_HEADER_BYTES;
	*len = n;
	r->start += PROTO_HEADER_BYTES + (size_t)n;
	if (r->start == r->len)
		r->start = r->len = 0;
	return 1;
}

size_t proto_reader_pending(const proto_reader *r)
{
	return r->len - r->start;
}

static int frame(const ProtobufCMessage *m, uint8_t **out, size_t *out_len)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	if (n > UINT32_MAX)
		return -EMSGSIZE;
	uint8_t *buf = malloc(PROTO_HEADER_BYTES + n);
	if (!buf)
		return -ENOMEM;
	buf[0] = (uint8_t)n;
	buf[1] = (uint8_t)(n >> 8);
	buf[2] = (uint8_t)(n >> 16);
	buf[3] = (uint8_t)(n >> 24);
	protobuf_c_message_pack(m, buf + PROTO_HEADER_BYTES);
	*out = buf;
	*out_len = PROTO_HEADER_BYTES + n;
	return 0;
}

int proto_frame_request(const proto_request *m, uint8_t **out, size_t *out_len)
{
	return frame(&m->base, out, out_len);
}

int proto_frame_response(const proto_response *m, uint8_t **out, size_t *out_len)
{
	return frame(&m->base, out, out_len);
}

proto_request *proto_request_parse(const uint8_t *body, size_t len)
{
	return goldfinch__v1__request__unpack(NULL, len, body);
}

proto_response *proto_response_parse(const uint8_t *body, size_t len)
{
	return goldfinch__v1__response__unpack(NULL, len, body);
}

void proto_request_free(proto_request *m)
{
	if (m)
		goldfinch__v1__request__free_unpacked(m, NULL);
}

void proto_response_free(proto_response *m)
{
	if (m)
		goldfinch__v1__response__free_unpacked(m, NULL);
}

const char *proto_error_name(Goldfinch__V1__ErrorCode code)
{
	const ProtobufCEnumValue *v =
		protobuf_c_enum_descriptor_get_value(&goldfinch__v1__error_code__descriptor, (int)code);
	return v && strlen(v->name) > 6 ? v->name + 6 /* past "ERROR_" */ : "UNKNOWN";
}
