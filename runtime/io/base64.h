/* Standard base64 (RFC 4648 section 4, with '=' padding), used to keep binary
 * data such as the packed model spec in safetensors string metadata. */
#ifndef EELLM_BASE64_H
#define EELLM_BASE64_H

#include <stddef.h>

/* The encoding of data[0..n) as a malloc'd NUL-terminated string; NULL only if
 * out of memory. */
char *eellm_base64_encode(const void *data, size_t n);

/* Decodes the NUL-terminated text into a malloc'd buffer of *n bytes (non-NULL
 * even when *n is 0). Strict: NULL if text has a character outside the
 * alphabet, whitespace, a length that is not a multiple of 4, misplaced
 * padding or non-zero bits after the last byte (or if out of memory). */
unsigned char *eellm_base64_decode(const char *text, size_t *n);

#endif
