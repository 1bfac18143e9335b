/* SVG drawing pieces shared by the figures (loss curves, eval curves). */
#include <math.h>
#include <stdio.h>

#include "runtime/io/svg.h"

static const char *const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

const char *eellm_svg_colour(unsigned i) { return palette[i % (sizeof palette / sizeof palette[0])]; }

/* Length of the valid UTF-8 character XML allows at s, or 0. */
static size_t utf8_char(const unsigned char *s) {
  if (s[0] < 0x80) return s[0] >= 0x20 || s[0] == '\t' || s[0] == '\n' || s[0] == '\r';
  size_t len = s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
               : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||  /* overlong, surrogate */
      (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90) ||  /* overlong, > U+10FFFF */
      (s[0] == 0xef && s[1] == 0xbf && s[2] >= 0xbe))                    /* U+FFFE, U+FFFF */
    return 0;
  return len;
}

/* Writes s as XML character data: markup escaped, what XML cannot hold as U+FFFD. */
void eellm_svg_xml(FILE *out, const char *s) {
  const unsigned char *c = (const unsigned char *)s;
  while (*c) {
    size_t len = utf8_char(c);
    if (!len)
      fputs("\xef\xbf\xbd", out), len = 1;
    else if (*c == '&')
      fputs("&amp;", out);
    else if (*c == '<')
      fputs("&lt;", out);
    else if (*c == '>')
      fputs("&gt;", out);
    else if (*c == '"')
      fputs("&quot;", out);
    else
      fwrite(c, 1, len, out);
    c += len;
  }
}

static size_t n_chars(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += ((unsigned char)*s & 0xc0) != 0x80;
  return n;
}

/* <text> with escaped content; squeezed into max_width when it would not fit. */
void eellm_svg_text(FILE *out, double x, double y, double size, double max_width, const char *attrs,
                 const char *s) {
  fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%g\"%s%s", x, y, size, *attrs ? " " : "",
          attrs);
  if ((double)n_chars(s) * 0.6 * size > max_width)
    fprintf(out, " textLength=\"%.0f\" lengthAdjust=\"spacingAndGlyphs\"", max_width);
  fputc('>', out);
  eellm_svg_xml(out, s);
  fputs("</text>\n", out);
}

/* 1, 2 or 5 times a power of ten, giving about `target` intervals over span. */
double eellm_svg_tick_step(double span, int target) {
  double raw = span / target, magnitude = pow(10, floor(log10(raw))), f = raw / magnitude;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * magnitude;
}

