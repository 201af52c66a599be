/*
 * error.c — the one-line error messages every function of the engine hands back.
 */
#include "goldfinch.h"

#include <stdarg.h>
#include <stdio.h>

int gf_error(char *err, int rc, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, GF_ERR_LEN, fmt, ap);
		va_end(ap);
	}
	return rc;
}
