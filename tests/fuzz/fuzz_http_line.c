/* eellm serve's acceptor on the first bytes of a connection
 * (cli/serve/http_line.c). Oracle: the verdict equals the one an independent
 * reading of RFC 9110's request line gives (a method of tchars, one space, a
 * target that does not start with a space), at every peek size. */
#include "cli/serve/http_line.h"
#include "fuzz.h"

/* RFC 9110's tchar, written out as a set. */
static int is_tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

static enum eellm_http_line expected(const char *buf, size_t n, size_t cap) {
  size_t eol = 0;
  while (eol < n && buf[eol] != '\n') eol++;
  if (eol == n) return n < cap ? EELLM_HTTP_LINE_INCOMPLETE : EELLM_HTTP_LINE_PASS;
  size_t len = eol > 0 && buf[eol - 1] == '\r' ? eol - 1 : eol;
  if (len == 0) return EELLM_HTTP_LINE_PASS;
  size_t method = 0;
  while (method < len && is_tchar((unsigned char)buf[method])) method++;
  int ok = method > 0 && method + 1 < len && buf[method] == ' ' && buf[method + 1] != ' ';
  return ok ? EELLM_HTTP_LINE_PASS : EELLM_HTTP_LINE_BAD;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *buf = (const char *)data;
  /* The acceptor peeks up to 512 bytes; every prefix is a moment it may look. */
  size_t cap = 512, n = size < cap ? size : cap;
  for (size_t k = 0; k <= n; k++) {
    enum eellm_http_line got = eellm_http_first_line(buf, k, cap);
    FUZZ_CHECK(got == expected(buf, k, cap), "peek of %zu bytes: verdict %d", k, (int)got);
    if (k > 0 && eellm_http_first_line(buf, k - 1, cap) != EELLM_HTTP_LINE_INCOMPLETE)
      FUZZ_CHECK(got == eellm_http_first_line(buf, k - 1, cap), "verdict changed at %zu", k);
  }
  return 0;
}
