/*
 * server_backend_local.c — the one-process backend: a gfe_engine over the model and the
 * store. Each operation is a thin call into daemon/engine.h or cache_store.h; what it adds
 * is the shape the front end needs (server_backend.h).
 */
#include "engine.h"
#include "server_backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct local {
	gfe_engine *e;
	gfd_backend_info info;
};

struct gfd_ingest {
	struct local *l;
	gfe_ingest *in;
};

struct gfd_session {
	gfe_session *s;
};

static void local_close(void *self)
{
	struct local *l = self;
	if (!l)
		return;
	gfe_close(l->e);
	free(l);
}

static void local_info(void *self, gfd_backend_info *out)
{
	*out = ((struct local *)self)->info;
}

static void local_memory(void *self, gfd_memory *out)
{
	gfe_memory m;
	gfe_memory_get(((struct local *)self)->e, &m);
	out->weight_bytes = m.weight_bytes;
	out->page_cache_bytes = m.page_cache_bytes;
	out->page_cache_budget = m.page_cache_budget;
	out->tier_bytes = m.tier_bytes;
	out->tier_budget = m.tier_budget;
}

static int local_list(void *self, cs_ctx_info **out, size_t *n, char *err)
{
	return cs_store_list(gfe_store(((struct local *)self)->e), out, n, err);
}

static int local_ctx_info(void *self, uint64_t serial, cs_ctx_info *out, char *err)
{
	return cs_store_info(gfe_store(((struct local *)self)->e), serial, out, err);
}

static int local_lookup_name(void *self, const char *name, cs_ctx_info *out)
{
	return cs_store_lookup_name(gfe_store(((struct local *)self)->e), name, out);
}

static int local_remove(void *self, uint64_t serial, char *err)
{
	return cs_store_remove(gfe_store(((struct local *)self)->e), serial, err);
}

static uint64_t local_disk_used(void *self)
{
	return cs_store_disk_used(gfe_store(((struct local *)self)->e));
}

static int local_ingest_open(struct local *l, const char *name, uint64_t serial, bool resume,
			     gfd_ingest **out, char *err)
{
	gfd_ingest *g = calloc(1, sizeof(*g));
	if (!g) {
		if (err)
			snprintf(err, GF_ERR_LEN, "out of memory for an ingest");
		return -ENOMEM;
	}
	g->l = l;
	int rc = resume ? gfe_ingest_resume(l->e, serial, &g->in, err)
			: gfe_ingest_begin(l->e, name, &g->in, err);
	if (rc) {
		free(g);
		return rc;
	}
	*out = g;
	return 0;
}

static int local_ingest_begin(void *self, const char *name, gfd_ingest **out, char *err)
{
	return local_ingest_open(self, name, 0, false, out, err);
}

static int local_ingest_resume(void *self, uint64_t serial, gfd_ingest **out, char *err)
{
	return local_ingest_open(self, NULL, serial, true, out, err);
}

static int local_ingest_text(gfd_ingest *in, const void *bytes, size_t n, char *err)
{
	return gfe_ingest_text(in->in, bytes, n, err);
}

static int local_ingest_tokens(gfd_ingest *in, const int32_t *tok, size_t n, char *err)
{
	return gfe_ingest_tokens(in->in, tok, n, err);
}

static int local_ingest_checkpoint(gfd_ingest *in, char *err)
{
	return gfe_ingest_checkpoint(in->in, err);
}

static int local_ingest_finish(gfd_ingest *in, cs_ctx_info *out, bool *reused, char *err)
{
	gfe_context ctx;
	int rc = gfe_ingest_finish(in->in, &ctx, NULL, err);
	if (rc)
		return rc;
	*reused = ctx.reused;
	return cs_store_info(gfe_store(in->l->e), ctx.serial, out, err);
}

static void local_ingest_state(const gfd_ingest *in, gfd_ingest_state *out)
{
	out->serial = gfe_ingest_serial(in->in);
	out->tokens_done = gfe_ingest_tokens_done(in->in);
	out->committed = gfe_ingest_committed(in->in);
	out->input_bytes = gfe_ingest_input_bytes(in->in);
}

static void local_ingest_free(gfd_ingest *in)
{
	if (!in)
		return;
	gfe_ingest_free(in->in);
	free(in);
}

static int local_session_open(void *self, uint64_t serial, gfd_session **out, char *err)
{
	struct local *l = self;
	gfd_session *s = calloc(1, sizeof(*s));
	if (!s) {
		if (err)
			snprintf(err, GF_ERR_LEN, "out of memory for a session");
		return -ENOMEM;
	}
	int rc = gfe_session_open(l->e, serial, &s->s, err);
	if (rc) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

static int local_session_prefill(gfd_session *s, const int32_t *tok, size_t n, float *logits,
				 char *err)
{
	return gfe_session_prefill(s->s, tok, n, logits, err);
}

static int local_session_feed(gfd_session *s, const int32_t *tok, size_t n, char *err)
{
	return gfe_session_feed(s->s, tok, n, err);
}

static int local_session_chunk(const gfd_session *s)
{
	return gfe_session_chunk(s->s);
}

static int local_session_step(gfd_session *s, int32_t tok, float *logits, char *err)
{
	return gfe_session_step(s->s, tok, logits, err);
}

static uint64_t local_session_base_tokens(const gfd_session *s)
{
	return gfe_session_base_tokens(s->s);
}

static void local_session_free(gfd_session *s)
{
	if (!s)
		return;
	gfe_session_free(s->s);
	free(s);
}

static const gfd_backend_ops local_ops = {
	.name = "local",
	.close = local_close,
	.info = local_info,
	.memory = local_memory,
	.list = local_list,
	.ctx_info = local_ctx_info,
	.lookup_name = local_lookup_name,
	.remove = local_remove,
	.disk_used = local_disk_used,
	.ingest_begin = local_ingest_begin,
	.ingest_resume = local_ingest_resume,
	.ingest_text = local_ingest_text,
	.ingest_tokens = local_ingest_tokens,
	.ingest_checkpoint = local_ingest_checkpoint,
	.ingest_finish = local_ingest_finish,
	.ingest_state = local_ingest_state,
	.ingest_free = local_ingest_free,
	.session_open = local_session_open,
	.session_prefill = local_session_prefill,
	.session_feed = local_session_feed,
	.session_chunk = local_session_chunk,
	.session_step = local_session_step,
	.session_base_tokens = local_session_base_tokens,
	.session_free = local_session_free,
};

void gfd_local_engine_config(const gfd_local_config *cfg, gfe_config *ec)
{
	gfe_config_defaults(ec);
	ec->model_path = cfg->model_path;
	ec->cache_dir = cfg->cache_dir;
	ec->c_dtype = cfg->c_dtype;
	if (cfg->checkpoint_tokens)
		ec->checkpoint_tokens = cfg->checkpoint_tokens;
	ec->tier_bytes = cfg->tier_bytes;
	ec->disk_budget = cfg->disk_budget;
	ec->threads = cfg->threads;
	if (cfg->chunk)
		ec->chunk = cfg->chunk;
	if (cfg->compute_set)
		ec->compute = cfg->compute;
	if (cfg->kv_dtype_set)
		ec->kv_dtype = cfg->kv_dtype;
}

int gfd_backend_local_open(gfd_backend *out, const gfd_local_config *cfg, char *err)
{
	gfe_config ec;
	struct local *l = calloc(1, sizeof(*l));
	if (!l) {
		if (err)
			snprintf(err, GF_ERR_LEN, "out of memory");
		return -ENOMEM;
	}
	gfd_local_engine_config(cfg, &ec);
	int rc = gfe_open(&l->e, &ec, err);
	if (rc) {
		free(l);
		return rc;
	}
	const gf_model *m = gfe_model(l->e);
	snprintf(l->info.model_name, sizeof(l->info.model_name), "%s", m->gguf.name);
	l->info.cfg = m->cfg;
	l->info.tokenizer = gfe_tokenizer(l->e);
	l->info.c_dtype = cfg->c_dtype;
	l->info.ranks = 1;
	l->info.disk_budget = cfg->disk_budget;
	l->info.compute = m->compute;
	snprintf(l->info.kernels, sizeof(l->info.kernels), "%s", gf_model_isa_name(m));
	l->info.weight_bytes = m->weight_bytes;
	out->ops = &local_ops;
	out->self = l;
	return 0;
}
