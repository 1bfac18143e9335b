/* The acceptor's look at a request line (http_line.h). */
#include "http_line.h"

#include <ctype.h>
#include <string.h>

/* A method token (RFC 9110 tchars), a space and a target; MHD checks the rest. */
static int request_line_ok(const char *line, size_t n) {
  static const char tchar[] = "!#$%&'*+-.^_`|~";
  size_t i = 0;
  while (i < n && (isalnum((unsigned char)line[i]) || (line[i] && strchr(tchar, line[i])))) i++;
  return i > 0 && i + 1 < n && line[i] == ' ' && line[i + 1] != ' ';
}

enum eellm_http_line eellm_http_first_line(const char *buf, size_t n, size_t cap) {
  const char *end = memchr(buf, '\n', n);
  if (!end) return n < cap ? EELLM_HTTP_LINE_INCOMPLETE : EELLM_HTTP_LINE_PASS;
  size_t len = (size_t)(end - buf);
  if (len && buf[len - 1] == '\r') len--;
  return len > 0 && !request_line_ok(buf, len) ? EELLM_HTTP_LINE_BAD : EELLM_HTTP_LINE_PASS;
}
