/*
 * gf-tokenize — text to World token ids and back, streaming in fixed memory.
 *
 *   gf-tokenize --vocab rwkv_vocab_v20230424.txt < text      # ids, space separated
 *   gf-tokenize --model model.gguf --decode < ids            # raw bytes
 */
#include "goldfinch_version.h"
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "goldfinch.h"

#define IO_CHUNK (64 * 1024)

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gf-tokenize (--vocab FILE | --model M.gguf) [--decode] < input\n"
		"\n"
		"Encodes stdin (any bytes, read in pieces) with the RWKV World tokenizer and prints\n"
		"the token ids separated by single spaces, then a newline.\n"
		"\n"
		"  --vocab FILE   vocabulary in the RWKV text format (rwkv_vocab_v20230424.txt)\n"
		"  --model FILE   take the vocabulary embedded in a GoldFinch GGUF file\n"
		"  --decode       read whitespace-separated ids from stdin, write their bytes\n"
		"  --help         show this text\n"
		"\n"
		"Exit status: 0 on success, 1 on bad input or an unreadable file (one-line message\n"
		"on stderr).\n");
}

struct out_buf {
	char buf[IO_CHUNK];
	size_t n;
	int first;    /* no id printed yet */
	int failed;
};

static int out_flush(struct out_buf *o)
{
	if (o->n && fwrite(o->buf, 1, o->n, stdout) != o->n)
		o->failed = 1;
	o->n = 0;
	return o->failed ? -EIO : 0;
}

static int print_ids(void *user, const int32_t *ids, size_t n)
{
	struct out_buf *o = user;

	for (size_t i = 0; i < n; i++) {
		char tmp[12];
		int len = 0;
		uint32_t v = (uint32_t)ids[i];

		if (o->n + sizeof(tmp) + 1 > sizeof(o->buf) && out_flush(o))
			return -EIO;
		if (!o->first)
			o->buf[o->n++] = ' ';
		o->first = 0;
		do {
			tmp[len++] = (char)('0' + v % 10);
			v /= 10;
		} while (v);
		while (len)
			o->buf[o->n++] = tmp[--len];
	}
	return 0;
}

static int encode(const gf_tokenizer *tk)
{
	struct out_buf o = { .first = 1 };
	uint8_t buf[IO_CHUNK];
	gf_encoder enc;
	int rc;

	gf_encoder_init(&enc, tk);
	for (;;) {
		ssize_t got = read(STDIN_FILENO, buf, sizeof(buf));

		if (got < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "gf-tokenize: stdin: %s\n", strerror(errno));
			return 1;
		}
		if (got == 0)
			break;
		rc = gf_encoder_feed(&enc, buf, (size_t)got, print_ids, &o);
		if (rc)
			goto write_error;
	}
	rc = gf_encoder_finish(&enc, print_ids, &o);
	if (rc)
		goto write_error;
	o.buf[o.n++] = '\n';
	if (out_flush(&o) || fflush(stdout))
		goto write_error;
	return 0;
write_error:
	fprintf(stderr, "gf-tokenize: stdout: write failed\n");
	return 1;
}

/* Writes the bytes of one id given as text; returns 0 or 1 after printing the error. */
static int decode_one(const gf_tokenizer *tk, const char *word, size_t len, long long index)
{
	const uint8_t *b;
	size_t n;
	unsigned long long id = 0;

	for (size_t i = 0; i < len; i++) {
		if (word[i] < '0' || word[i] > '9') {
			fprintf(stderr, "gf-tokenize: stdin: item %lld '%.*s' is not a token id\n",
				index, (int)(len > 40 ? 40 : len), word);
			return 1;
		}
		if (id < 1000000000ull)
			id = id * 10 + (unsigned)(word[i] - '0');
	}
	if (id >= (unsigned long long)tk->vocab.n_tokens) {
		fprintf(stderr, "gf-tokenize: stdin: item %lld: id %.*s is out of range (vocab has %d tokens)\n",
			index, (int)(len > 40 ? 40 : len), word, tk->vocab.n_tokens);
		return 1;
	}
	b = gf_tokenizer_token(tk, (int32_t)id, &n);
	if (n && fwrite(b, 1, n, stdout) != n) {
		fprintf(stderr, "gf-tokenize: stdout: write failed\n");
		return 1;
	}
	return 0;
}

static int is_space(char c)
{
	return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

struct word {
	char text[64]; /* an id longer than this is out of range anyway; keep its start */
	size_t len, total;
	long long index;
};

/* Ends the word being read, if any: decodes it. */
static int end_word(const gf_tokenizer *tk, struct word *w)
{
	int rc;

	if (!w->total)
		return 0;
	if (w->total > w->len)
		w->text[w->len - 1] = 'X'; /* too long: never a valid id */
	w->index++;
	rc = decode_one(tk, w->text, w->len, w->index);
	w->len = w->total = 0;
	return rc;
}

static int decode(const gf_tokenizer *tk)
{
	char buf[IO_CHUNK];
	struct word w = { .len = 0 };

	for (;;) {
		ssize_t got = read(STDIN_FILENO, buf, sizeof(buf));

		if (got < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "gf-tokenize: stdin: %s\n", strerror(errno));
			return 1;
		}
		if (got == 0)
			break;
		for (ssize_t i = 0; i < got; i++) {
			if (is_space(buf[i])) {
				if (end_word(tk, &w))
					return 1;
			} else {
				if (w.len < sizeof(w.text))
					w.text[w.len++] = buf[i];
				w.total++;
			}
		}
	}
	if (end_word(tk, &w))
		return 1;
	if (fflush(stdout)) {
		fprintf(stderr, "gf-tokenize: stdout: write failed\n");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (gf_version_asked(argc, argv, "gf-tokenize"))
		return 0;

	static const struct option opts[] = {
		{ "vocab", required_argument, NULL, 'v' },
		{ "model", required_argument, NULL, 'm' },
		{ "decode", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *vocab_path = NULL, *model_path = NULL;
	int do_decode = 0, c, rc = 1;
	char err[GF_ERR_LEN];
	gf_vocab vocab = { 0 };
	gf_gguf gguf;
	gf_tokenizer tk;

	memset(&gguf, 0, sizeof(gguf));
	opterr = 0; /* our own one-line messages */
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (c) {
		case 'v': vocab_path = optarg; break;
		case 'm': model_path = optarg; break;
		case 'd': do_decode = 1; break;
		case 'h': usage(stdout); return 0;
		case ':':
			fprintf(stderr, "gf-tokenize: option '%s' needs a value (see --help)\n",
				argv[optind - 1]);
			return 1;
		default:
			fprintf(stderr, "gf-tokenize: unknown option '%s' (see --help)\n",
				argv[optind - 1]);
			return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "gf-tokenize: unexpected argument '%s' (input comes from stdin)\n",
			argv[optind]);
		return 1;
	}
	if (!vocab_path == !model_path) {
		fprintf(stderr, "gf-tokenize: give exactly one of --vocab FILE or --model FILE (see --help)\n");
		return 1;
	}
	if (vocab_path) {
		if (gf_vocab_load_file(&vocab, vocab_path, err)) {
			fprintf(stderr, "gf-tokenize: %s\n", err);
			return 1;
		}
		rc = gf_tokenizer_init(&tk, &vocab, err);
		gf_vocab_free(&vocab);
	} else {
		if (gf_gguf_read(&gguf, model_path, err)) {
			fprintf(stderr, "gf-tokenize: %s\n", err);
			return 1;
		}
		if (gguf.vocab.n_tokens == 0) {
			fprintf(stderr, "gf-tokenize: %s: the file holds no vocabulary (tokenizer.ggml.tokens)\n",
				model_path);
			gf_gguf_free(&gguf);
			return 1;
		}
		rc = gf_tokenizer_init(&tk, &gguf.vocab, err);
		gf_gguf_free(&gguf);
	}
	if (rc) {
		fprintf(stderr, "gf-tokenize: %s: %s\n", vocab_path ? vocab_path : model_path, err);
		return 1;
	}
	rc = do_decode ? decode(&tk) : encode(&tk);
	gf_tokenizer_free(&tk);
	return rc;
}
