/* The speedup / quality curve of a threshold sweep as an SVG (eval.h), drawn
 * with the pieces `eellm plot` uses (runtime/io/svg.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm/eval.h"
#include "eellm/outfile.h"
#include "runtime/io/svg.h"

enum {
  WIDTH = 900, HEIGHT = 500,
  PLOT_L = 72, PLOT_T = 52, PLOT_R = 648, PLOT_B = 440,
  PLOT_W = PLOT_R - PLOT_L, PLOT_H = PLOT_B - PLOT_T,
  LEGEND_X = 670, LEGEND_W = 218
};

struct frame {
  double x0, x1, y0, y1;
};

static double px(const struct frame *f, double x) {
  return PLOT_L + (x - f->x0) / (f->x1 - f->x0) * PLOT_W;
}
static double py(const struct frame *f, double y) {
  return PLOT_B - (y - f->y0) / (f->y1 - f->y0) * PLOT_H;
}

static const char *const rule_names[] = {"maxprob", "entropy"};

/* Loss increase in percent; the axes span every finite point, 0 and speedup 1. */
static double xval(const struct eellm_eval_point *p) { return 100 * p->loss_increase; }

static void choose_frame(struct frame *f, const struct eellm_eval_point *pts, size_t n) {
  f->x0 = 0, f->x1 = 0, f->y0 = 1, f->y1 = 1;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(xval(&pts[i])) || !isfinite(pts[i].speedup)) continue;
    f->x0 = fmin(f->x0, xval(&pts[i]));
    f->x1 = fmax(f->x1, xval(&pts[i]));
    f->y0 = fmin(f->y0, pts[i].speedup);
    f->y1 = fmax(f->y1, pts[i].speedup);
  }
  double xs = f->x1 - f->x0 > 0 ? f->x1 - f->x0 : 1, ys = f->y1 - f->y0 > 0 ? f->y1 - f->y0 : 1;
  f->x0 -= 0.05 * xs, f->x1 += 0.05 * xs, f->y0 -= 0.05 * ys, f->y1 += 0.05 * ys;
}

static void axes(FILE *out, const struct frame *f) {
  double step = eellm_svg_tick_step(f->x1 - f->x0, 8);
  char label[32];
  for (double i = ceil(f->x0 / step); i * step <= f->x1; i++) {
    double x = px(f, i * step);
    fprintf(out, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e6e6e6\"/>\n", x,
            PLOT_T, x, PLOT_B);
    snprintf(label, sizeof label, "%g", fabs(i * step) < 1e-12 ? 0 : i * step);
    eellm_svg_text(out, x, PLOT_B + 19, 11, 80, "text-anchor=\"middle\" fill=\"#333333\"", label);
  }
  eellm_svg_text(out, PLOT_L + PLOT_W / 2.0, PLOT_B + 42, 13, PLOT_W, "text-anchor=\"middle\"",
                 "early-exit loss increase over the final head (%)");
  step = eellm_svg_tick_step(f->y1 - f->y0, 6);
  for (double i = ceil(f->y0 / step); i * step <= f->y1; i++) {
    double y = py(f, i * step);
    fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e6e6e6\"/>\n", PLOT_L,
            y, PLOT_R, y);
    snprintf(label, sizeof label, "%g", i * step);
    eellm_svg_text(out, PLOT_L - 8, y + 4, 11, PLOT_L - 26, "text-anchor=\"end\" fill=\"#333333\"",
                   label);
  }
  char rotate[64];
  snprintf(rotate, sizeof rotate, "text-anchor=\"middle\" transform=\"rotate(-90 %d %d)\"", 20,
           (PLOT_T + PLOT_B) / 2);
  eellm_svg_text(out, 20, (PLOT_T + PLOT_B) / 2.0, 13, PLOT_H, rotate,
                 "speedup bound (FLOPs, full depth / mean)");
}

static void curve(FILE *out, const struct frame *f, const struct eellm_eval_point *pts,
                  const int *calibrated, size_t n, int rule, double *legend_y) {
  size_t count = 0;
  for (size_t i = 0; i < n; i++) count += (int)pts[i].rule == rule;
  if (!count) return;
  const char *colour = eellm_svg_colour((unsigned)rule);
  fprintf(out, "<g class=\"rule rule-%s\" stroke=\"%s\" fill=\"%s\">\n<polyline fill=\"none\" "
               "stroke-width=\"2\" points=\"", rule_names[rule], colour, colour);
  /* Highest threshold first: from exits off towards more exits. */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < n; i++) {
      const struct eellm_eval_point *p = &pts[i];
      if ((int)p->rule != rule || !isfinite(xval(p)) || !isfinite(p->speedup)) continue;
      double x = px(f, xval(p)), y = py(f, p->speedup);
      if (pass == 0) {
        fprintf(out, "%.1f,%.1f ", x, y);
        continue;
      }
      fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" stroke=\"#ffffff\"/>\n", x, y);
      if (calibrated && calibrated[i])
        fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"7\" fill=\"none\" stroke-width=\"2\"/>\n",
                x, y);
      char label[32];
      snprintf(label, sizeof label, "%s%.4g", calibrated && calibrated[i] ? "calibrated " : "",
               (double)p->threshold);
      eellm_svg_text(out, x + 6, y - 6, 9, 120, "stroke=\"none\" fill=\"#444444\"", label);
    }
    if (pass == 0) fputs("\"/>\n", out);
  }
  fputs("</g>\n", out);
  fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" "
               "stroke-width=\"3\"/>\n", LEGEND_X, *legend_y - 4, LEGEND_X + 24, *legend_y - 4,
          colour);
  char name[64];
  snprintf(name, sizeof name, "%s rule", rule_names[rule]);
  eellm_svg_text(out, LEGEND_X + 32, *legend_y, 12, LEGEND_W - 32, "", name);
  *legend_y += 20;
}

static void draw(FILE *out, const char *title, const struct eellm_eval_point *pts,
                 const int *calibrated, size_t n) {
  struct frame f;
  choose_frame(&f, pts, n);
  fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
               "<title>", WIDTH, HEIGHT, WIDTH, HEIGHT);
  eellm_svg_xml(out, title);
  fprintf(out, ": early-exit speedup against quality</title>\n"
               "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", WIDTH, HEIGHT);
  axes(out, &f);
  double legend_y = PLOT_T + 8;
  for (int rule = 0; rule < 2; rule++) curve(out, &f, pts, calibrated, n, rule, &legend_y);
  eellm_svg_text(out, LEGEND_X, legend_y + 8, 11, LEGEND_W, "fill=\"#555555\"",
                 "points: thresholds (teacher-forced)");
  fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
               "stroke=\"#444444\"/>\n", PLOT_L, PLOT_T, PLOT_W, PLOT_H);
  eellm_svg_text(out, PLOT_L, 30, 17, 440, "class=\"title\" font-weight=\"bold\"", title);
  eellm_svg_text(out, WIDTH - 12, 30, 12, 330, "text-anchor=\"end\" fill=\"#555555\"",
                 "speedup bound against loss increase, per exit rule");
  fputs("</svg>\n", out);
}

int eellm_eval_plot(const char *svg_path, const char *title, const struct eellm_eval_point *points,
                    const int *calibrated, size_t n, char *err, size_t errlen) {
  struct eellm_outfile out;
  int ok = eellm_outfile_open(&out, svg_path, NULL, 0) == 0;
  if (ok) {
    draw(out.fp, title ? title : "eval", points, calibrated, n);
    ok = eellm_outfile_commit(&out, NULL, 0) == 0;
  }
  if (!ok) snprintf(err, errlen, "%s: cannot write (%s)", svg_path, strerror(errno));
  return ok ? 0 : -1;
}
