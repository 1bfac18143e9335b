/* RFC 4648 base64: encoder and strict (canonical-only) decoder. */
#include "runtime/io/base64.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *eellm_base64_encode(const void *data, size_t n) {
  const unsigned char *in = data;
  if (n / 3 >= SIZE_MAX / 4 - 1) return NULL;
  char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i += 3) {
    size_t left = n - i;
    uint32_t group = (uint32_t)in[i] << 16 | (left > 1 ? (uint32_t)in[i + 1] << 8 : 0) |
                     (left > 2 ? in[i + 2] : 0);
    *o++ = alphabet[group >> 18 & 63];
    *o++ = alphabet[group >> 12 & 63];
    *o++ = left > 1 ? alphabet[group >> 6 & 63] : '=';
    *o++ = left > 2 ? alphabet[group & 63] : '=';
  }
  *o = '\0';
  return out;
}

/* The 6-bit value of c, or -1 if c is not in the alphabet ('=' included). */
static int sextet(char c) {
  const char *hit = c ? strchr(alphabet, c) : NULL;
  return hit ? (int)(hit - alphabet) : -1;
}

/* Decodes one 4-character group into out; returns the byte count (1..3) or -1.
 * Padding is allowed only when last is set. */
static int decode_group(const char *q, int last, unsigned char *out) {
  int pad = (q[3] == '=') + (q[3] == '=' && q[2] == '=');
  if (pad && !last) return -1;
  uint32_t group = 0;
  for (int k = 0; k < 4 - pad; k++) {
    int v = sextet(q[k]);
    if (v < 0) return -1;
    group = group << 6 | (uint32_t)v;
  }
  group <<= 6 * pad;
  /* canonical: the bits below the last decoded byte must be zero */
  if (group & ((1u << (8 * pad)) - 1)) return -1;
  out[0] = (unsigned char)(group >> 16);
  out[1] = (unsigned char)(group >> 8);
  out[2] = (unsigned char)group;
  return 3 - pad;
}

unsigned char *eellm_base64_decode(const char *text, size_t *n) {
  size_t len = strlen(text);
  if (len % 4 != 0) return NULL;
  unsigned char *out = malloc(len / 4 * 3 + 1);
  if (!out) return NULL;
  size_t used = 0;
  for (size_t i = 0; i < len; i += 4) {
    int got = decode_group(text + i, i + 4 == len, out + used);
    if (got < 0) {
      free(out);
      return NULL;
    }
    used += (size_t)got;
  }
  *n = used;
  return out;
}
