/*
 * server_util.c — small helpers of the daemon: sizes, constant-time compare, clocks, the log.
 */
#include "server.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int gfd_parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	if (!s || !isdigit((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int gfd_parse_size(const char *s, uint64_t *out)
{
	char *end;
	if (!s || !isdigit((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	unsigned shift = 0;
	switch (toupper((unsigned char)*end)) {
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: break;
	}
	if (shift && (*end == 'i' || *end == 'I'))
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

bool gfd_ct_equal(const void *a, size_t na, const void *b, size_t nb)
{
	/* Walks the expected secret's length whatever the guess is, so the time tells nothing
	 * about how many leading bytes matched. */
	const volatile uint8_t *pa = a, *pb = b;
	size_t n = na;
	uint8_t diff = na != nb;
	for (size_t i = 0; i < n; i++) {
		uint8_t y = nb ? pb[i % nb] : 0;
		diff |= (uint8_t)(pa[i] ^ y);
	}
	return diff == 0 && na == nb;
}

void gfd_vformat_line(char *msg, size_t len, const char *fmt, va_list ap)
{
	vsnprintf(msg, len, fmt, ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

int64_t gfd_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t gfd_unix_ms(int64_t realtime_ns)
{
	return realtime_ns / 1000000;
}

double gfd_ms_since(int64_t t0_ns)
{
	return (double)(gfd_now_ns() - t0_ns) / 1e6;
}

uint64_t gfd_rss_bytes(void)
{
	unsigned long long size = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f)
		return 0;
	if (fscanf(f, "%llu %llu", &size, &rss) != 2)
		rss = 0;
	fclose(f);
	return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

int gfd_log_open(gfd_log *l, const char *path, char *err)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->mu, NULL);
	if (!path || !strcmp(path, "-")) {
		l->f = stderr;
		return 0;
	}
	l->f = fopen(path, "a");
	if (!l->f) {
		int rc = -errno;
		if (err)
			snprintf(err, GF_ERR_LEN, "--log-file %s: %s", path, strerror(errno));
		pthread_mutex_destroy(&l->mu);
		return rc;
	}
	l->own = true;
	return 0;
}

void gfd_log_close(gfd_log *l)
{
	if (!l || !l->f)
		return;
	if (l->own)
		fclose(l->f);
	l->f = NULL;
	pthread_mutex_destroy(&l->mu);
}

void gfd_logf(gfd_log *l, const char *fmt, ...)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ldZ goldfinchd: ",
		      ts.tv_nsec / 1000000);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One event, one line: a client-supplied name must not forge a second. */
	for (char *p = line + n; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	pthread_mutex_lock(&l->mu);
	fprintf(l->f, "%s\n", line);
	fflush(l->f);
	pthread_mutex_unlock(&l->mu);
}
