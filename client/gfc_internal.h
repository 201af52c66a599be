/*
 * gfc_internal.h — shared by the client library's own files, not part of its API.
 */
#ifndef GFC_INTERNAL_H
#define GFC_INTERNAL_H

/* Writes a one-line message into err (GFC_ERR_LEN bytes; nothing when NULL). */
void gfc_seterr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
