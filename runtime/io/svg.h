/* SVG drawing pieces shared by the figures: `eellm plot`'s loss curves
 * (runtime/train/plot.c) and `eellm eval`'s speedup curves (cli/eval.c via
 * eellm_eval_plot). */
#ifndef EELLM_SVG_H
#define EELLM_SVG_H

#include <stdio.h>

/* The i-th colour of a ten-colour palette (wrapping). */
const char *eellm_svg_colour(unsigned i);
/* Writes s as XML character data: markup escaped, what XML cannot hold as U+FFFD. */
void eellm_svg_xml(FILE *out, const char *s);
/* <text> at (x, y) with extra attributes (may be ""), content escaped, squeezed
 * into max_width when it would not fit. */
void eellm_svg_text(FILE *out, double x, double y, double size, double max_width,
                    const char *attrs, const char *s);
/* 1, 2 or 5 times a power of ten, giving about `target` intervals over span. */
double eellm_svg_tick_step(double span, int target);

#endif
