/*
 * fuzz_request.c — every Request message goldfinchd accepts, as the daemon decodes it
 * (protobuf-c's generated unpackers, via proto_request_parse) and then the daemon-side
 * checks that can run without a server:
 *   - Hello: the auth token compare (gfd_ct_equal) against a known secret;
 *   - Generate: the sampling parameters built as on_generate builds them, gf_sampling_check,
 *     and for parameters it accepts a sampler run over fixed logits (the worker's path);
 *   - Generate.context and DropContext.context: gfd_resolve_context over a fake backend
 *     holding three contexts (names, #serials, key prefixes).
 * The rest of the request checks (names, paths, stop strings, max_tokens, c_dtype) are
 * static functions of daemon/server_loop.c that need a live server: tests/fuzz/README.md
 * says what would expose them.
 *
 * Input: the whole input is one serialized Request. Besides, byte 0 picks one of the ten
 * request messages (Request, Hello, IngestStart, IngestData, FileStart, IngestEnd, Generate,
 * Cancel, StatusRequest|ListContexts, DropContext) and the rest is unpacked as that message
 * directly, so each message's own decoder is fuzzed too.
 *
 * Checks: a message that unpacks packs to bytes that unpack again, and packing that second
 * message gives the same bytes (protobuf-c round trip); the sampler returns an id inside
 * the vocabulary for every accepted parameter set; context resolution returns 0, -EINVAL or
 * -ENOENT with a one-line message, and a hit names one of the stored contexts.
 */
#include "fuzz_common.h"
#include "fuzz_proto.h"
#include "protocol.h"
#include "server.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* ---- a backend that knows three contexts ---------------------------------------------- */

static cs_ctx_info fake_ctx[3];

static void fake_init(void)
{
	static const char *names[3] = { "book", "", "src/main" };
	static const uint64_t serials[3] = { 1, 2, 7 };

	for (int i = 0; i < 3; i++) {
		memset(&fake_ctx[i], 0, sizeof(fake_ctx[i]));
		fake_ctx[i].serial = serials[i];
		fake_ctx[i].key.hi = 0x3fa9c0d2e1b40000ull + (uint64_t)i;
		fake_ctx[i].key.lo = 0x0123456789abcdefull * (uint64_t)(i + 1);
		snprintf(fake_ctx[i].name, sizeof(fake_ctx[i].name), "%s", names[i]);
		fake_ctx[i].sealed = true;
	}
	/* Two keys that share their first 12 hex digits: an ambiguous prefix. */
	fake_ctx[2].key.hi = fake_ctx[0].key.hi;
}

static int fake_list(void *self, cs_ctx_info **out, size_t *n, char *err)
{
	(void)self;
	(void)err;
	*out = malloc(sizeof(fake_ctx));
	if (!*out)
		return -ENOMEM;
	memcpy(*out, fake_ctx, sizeof(fake_ctx));
	*n = 3;
	return 0;
}

static int fake_ctx_info(void *self, uint64_t serial, cs_ctx_info *out, char *err)
{
	(void)self;
	(void)err;
	for (int i = 0; i < 3; i++)
		if (fake_ctx[i].serial == serial) {
			*out = fake_ctx[i];
			return 0;
		}
	return -ENOENT;
}

static int fake_lookup_name(void *self, const char *name, cs_ctx_info *out)
{
	(void)self;
	for (int i = 0; i < 3; i++)
		if (fake_ctx[i].name[0] && !strcmp(fake_ctx[i].name, name)) {
			*out = fake_ctx[i];
			return 0;
		}
	return -ENOENT;
}

static const gfd_backend_ops fake_ops = {
	.name = "fuzz",
	.list = fake_list,
	.ctx_info = fake_ctx_info,
	.lookup_name = fake_lookup_name,
};

static gfd_server *server;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fake_init();
	server = calloc(1, sizeof(*server));
	FUZZ_CHECK(server, "out of memory");
	server->be.ops = &fake_ops;
	return 0;
}

static void resolve(const char *ref)
{
	cs_ctx_info out;
	char err[GF_ERR_LEN] = "";
	int rc;

	if (!ref)
		return;
	rc = gfd_resolve_context(server, ref, &out, err);
	FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ENOENT, "resolve \"%s\": %d", ref, rc);
	if (rc) {
		fuzz_check_err(err, sizeof(err), "gfd_resolve_context");
		return;
	}
	bool known = false;
	for (int i = 0; i < 3; i++)
		known |= out.serial == fake_ctx[i].serial;
	FUZZ_CHECK(known, "resolve \"%s\" gave serial %llu", ref, (unsigned long long)out.serial);
}

/* ---- Generate: sampling as on_generate builds it, then the worker's sampler ------------ */

#define FUZZ_VOCAB 97

static void generate(const Goldfinch__V1__Generate *m)
{
	gf_sampling sp;
	gf_sampler s;
	char err[GF_ERR_LEN] = "";
	float logits[FUZZ_VOCAB];

	resolve(m->context);
	gf_sampling_defaults(&sp);
	if (m->has_temperature)
		sp.temperature = m->temperature;
	if (m->has_top_k) {
		if (m->top_k > (uint32_t)INT32_MAX)
			return;
		sp.top_k = (int32_t)m->top_k;
	}
	if (m->has_top_p)
		sp.top_p = m->top_p;
	if (m->has_min_p)
		sp.min_p = m->min_p;
	if (m->has_presence_penalty)
		sp.presence_penalty = m->presence_penalty;
	if (m->has_frequency_penalty)
		sp.frequency_penalty = m->frequency_penalty;
	if (m->has_seed)
		sp.seed = m->seed;
	if (gf_sampling_check(&sp, err)) {
		fuzz_check_err(err, sizeof(err), "gf_sampling_check");
		return;
	}
	FUZZ_CHECK(gf_sampler_init(&s, FUZZ_VOCAB, &sp) == 0, "sampler init after a passed check");
	/* Logits of a real model's scale (std ~1, max ~5), some tied, some far below. */
	for (int step = 0; step < 4; step++) {
		for (int i = 0; i < FUZZ_VOCAB; i++)
			logits[i] = (float)((i * 37 + step * 11) % 23) * 0.4f - 4.0f +
				    (i % 7 == 0 ? -60.0f : 0.0f);
		if (step == 3)
			for (int i = 0; i < FUZZ_VOCAB; i++)
				logits[i] = 1.0f; /* all tied */
		int32_t tok = gf_sampler_sample(&s, logits);

		FUZZ_CHECK(tok >= 0 && tok < FUZZ_VOCAB,
			   "sampler gave %d (temperature %g top_k %d top_p %g min_p %g pp %g fp %g)",
			   tok, sp.temperature, sp.top_k, sp.top_p, sp.min_p, sp.presence_penalty,
			   sp.frequency_penalty);
		gf_sampler_accept(&s, tok);
	}
	gf_sampler_free(&s);
}

/* ---- the request as the loop dispatches it --------------------------------------------- */

static void request(const proto_request *req)
{
	static const uint8_t secret[] = "fuzz-secret-token";

	switch (req->body_case) {
	case GOLDFINCH__V1__REQUEST__BODY_HELLO: {
		const char *tok = req->hello->auth_token ? req->hello->auth_token : "";
		size_t n = strlen(tok);
		bool eq = gfd_ct_equal(secret, sizeof(secret) - 1, tok, n);

		FUZZ_CHECK(eq == (n == sizeof(secret) - 1 && !memcmp(tok, secret, n)),
			   "gfd_ct_equal disagrees with memcmp");
		break;
	}
	case GOLDFINCH__V1__REQUEST__BODY_GENERATE:
		generate(req->generate);
		break;
	case GOLDFINCH__V1__REQUEST__BODY_DROP_CONTEXT:
		if (req->drop_context->context && req->drop_context->context[0])
			resolve(req->drop_context->context);
		break;
	default:
		break;
	}
}

/* ---- protobuf-c round trip --------------------------------------------------------------- */

static void round_trip(const ProtobufCMessageDescriptor *d, const ProtobufCMessage *m)
{
	size_t n1 = protobuf_c_message_get_packed_size(m), n2;
	uint8_t *b1 = malloc(n1 ? n1 : 1), *b2;
	ProtobufCMessage *m2;

	FUZZ_CHECK(b1, "out of memory");
	FUZZ_CHECK(protobuf_c_message_pack(m, b1) == n1, "%s: pack size", d->name);
	m2 = protobuf_c_message_unpack(d, NULL, n1, b1);
	if (!m2 && fuzz_has_unknown(m)) {
		free(b1); /* the protobuf-c quirk of fuzz_proto.h */
		return;
	}
	FUZZ_CHECK(m2, "%s: a packed message does not unpack", d->name);
	n2 = protobuf_c_message_get_packed_size(m2);
	b2 = malloc(n2 ? n2 : 1);
	FUZZ_CHECK(b2, "out of memory");
	FUZZ_CHECK(protobuf_c_message_pack(m2, b2) == n2, "%s: pack size", d->name);
	FUZZ_CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0, "%s: pack(unpack(pack(m))) != pack(m)",
		   d->name);
	protobuf_c_message_free_unpacked(m2, NULL);
	free(b2);
	free(b1);
}

static const ProtobufCMessageDescriptor *const messages[] = {
	&goldfinch__v1__request__descriptor,
	&goldfinch__v1__hello__descriptor,
	&goldfinch__v1__ingest_start__descriptor,
	&goldfinch__v1__ingest_data__descriptor,
	&goldfinch__v1__file_start__descriptor,
	&goldfinch__v1__ingest_end__descriptor,
	&goldfinch__v1__generate__descriptor,
	&goldfinch__v1__cancel__descriptor,
	&goldfinch__v1__status_request__descriptor,
	&goldfinch__v1__list_contexts__descriptor,
	&goldfinch__v1__drop_context__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const size_t n_messages = sizeof(messages) / sizeof(messages[0]);
	proto_request *req;

	if (!server)
		LLVMFuzzerInitialize(NULL, NULL);
	req = proto_request_parse(data, size);
	if (req) {
		request(req);
		round_trip(&goldfinch__v1__request__descriptor, &req->base);
		proto_request_free(req);
	}
	if (size >= 1) {
		const ProtobufCMessageDescriptor *d = messages[data[0] % n_messages];
		ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size - 1, data + 1);

		if (m) {
			round_trip(d, m);
			if (d == &goldfinch__v1__generate__descriptor)
				generate((const Goldfinch__V1__Generate *)m);
			protobuf_c_message_free_unpacked(m, NULL);
		}
	}
	return 0;
}
