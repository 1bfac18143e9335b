/* The one piece of an HTTP request head eellm serve reads itself: the
 * acceptor peeks at a new connection's first line, before libmicrohttpd takes
 * the connection, so that a garbage request line gets a 400 (libmicrohttpd
 * would close such a connection without a word). */
#ifndef EELLM_SERVE_HTTP_LINE_H
#define EELLM_SERVE_HTTP_LINE_H

#include <stddef.h>

enum eellm_http_line {
  EELLM_HTTP_LINE_INCOMPLETE, /* no end of line yet, and room to peek more */
  EELLM_HTTP_LINE_PASS,       /* a request line (a method token, a space, a target), an
                                 empty line, or a line longer than the peek: for MHD */
  EELLM_HTTP_LINE_BAD,        /* a non-empty line that is no request line: 400 */
};

/* What the n bytes peeked so far (room for cap) say of the first line. */
enum eellm_http_line eellm_http_first_line(const char *buf, size_t n, size_t cap);

#endif
