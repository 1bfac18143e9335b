/* metrics.jsonl -> a hand-written, self-contained SVG line chart: per exit the
 * training loss (thin; an EMA over a faint raw line once there are enough
 * steps) and the validation loss (thick, dashed, dots), 1-2-5 ticks, and a
 * legend with each exit's final validation loss. */
#include "eellm/train.h"

#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm/outfile.h"
#include "runtime/io/svg.h"

static void set_error(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- reading metrics.jsonl ------------------------------------------------ */

enum { MAX_WARNINGS = 5 };

struct record {
  long long step;
  size_t at; /* index of its values; also file order, so of a repeated step the last wins */
  int has_val;
};

struct metrics {
  unsigned n_exits;
  size_t n, cap;
  struct record *recs;
  double *values; /* per record: n_exits training losses, then n_exits validation losses */
  void (*warn)(void *ctx, const char *message); /* the caller's, or NULL */
  void *warn_ctx;
};

static void warnf(const struct metrics *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(const struct metrics *m, const char *fmt, ...) {
  if (!m->warn) return;
  char message[4200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  m->warn(m->warn_ctx, message);
}

static const double *train_of(const struct metrics *m, const struct record *r) {
  return m->values + r->at * 2 * m->n_exits;
}

static const double *val_of(const struct metrics *m, const struct record *r) {
  return train_of(m, r) + m->n_exits;
}

static int is_number_array(const json_t *a) {
  if (!json_is_array(a) || json_array_size(a) == 0) return 0;
  for (size_t i = 0; i < json_array_size(a); i++)
    if (!json_is_number(json_array_get(a, i))) return 0;
  return 1;
}

/* Why obj is not a metrics line, or NULL. n_exits 0 accepts any count. */
static const char *check_line(const json_t *obj, unsigned n_exits) {
  if (!json_is_object(obj)) return "not a JSON object";
  const json_t *step = json_object_get(obj, "step");
  if (!json_is_integer(step) || json_integer_value(step) < 0)
    return "\"step\" is not a non-negative integer";
  const json_t *loss = json_object_get(obj, "loss");
  if (!is_number_array(loss)) return "\"loss\" is not an array of numbers";
  if (n_exits && json_array_size(loss) != n_exits)
    return "\"loss\" has another number of exits than the first line";
  const json_t *val = json_object_get(obj, "val_loss");
  if (val && (!is_number_array(val) || json_array_size(val) != json_array_size(loss)))
    return "\"val_loss\" is not an array of numbers as long as \"loss\"";
  return NULL;
}

/* Appends a checked line; -1 when out of memory. */
static int append(struct metrics *m, const json_t *obj) {
  if (!m->n_exits) m->n_exits = (unsigned)json_array_size(json_object_get(obj, "loss"));
  if (m->n == m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 256;
    struct record *recs = realloc(m->recs, cap * sizeof *recs);
    if (recs) m->recs = recs;
    double *values = realloc(m->values, cap * 2 * m->n_exits * sizeof *values);
    if (values) m->values = values;
    if (!recs || !values) return -1;
    m->cap = cap;
  }
  struct record *r = &m->recs[m->n];
  const json_t *val = json_object_get(obj, "val_loss");
  *r = (struct record){json_integer_value(json_object_get(obj, "step")), m->n, val != NULL};
  double *train = m->values + r->at * 2 * m->n_exits;
  for (unsigned k = 0; k < m->n_exits; k++) {
    train[k] = json_number_value(json_array_get(json_object_get(obj, "loss"), k));
    train[m->n_exits + k] = val ? json_number_value(json_array_get(val, k)) : NAN;
  }
  m->n++;
  return 0;
}

static int by_step_then_order(const void *a, const void *b) {
  const struct record *x = a, *y = b;
  if (x->step != y->step) return x->step < y->step ? -1 : 1;
  return x->at < y->at ? -1 : x->at > y->at;
}

/* Sorts by step and keeps the last line of each step. */
static void sort_and_dedupe(struct metrics *m) {
  qsort(m->recs, m->n, sizeof *m->recs, by_step_then_order);
  size_t kept = 0;
  for (size_t i = 0; i < m->n; i++)
    if (i + 1 == m->n || m->recs[i + 1].step != m->recs[i].step) m->recs[kept++] = m->recs[i];
  m->n = kept;
}

static void warn_skipped(const struct metrics *m, const char *path, size_t line, const char *why,
                         size_t n_skipped) {
  if (n_skipped <= MAX_WARNINGS) warnf(m, "%s:%zu: line skipped: %s", path, line, why);
}

/* Reads every line of f; -1 with err when out of memory. */
static int read_lines(FILE *f, const char *path, struct metrics *m, char *err, size_t errlen) {
  char *line = NULL;
  size_t size = 0, line_no = 0, n_skipped = 0;
  ssize_t len;
  int rc = 0;
  while (rc == 0 && (len = getline(&line, &size, f)) >= 0) {
    line_no++;
    if (strspn(line, " \t\r\n") == (size_t)len) continue;
    json_error_t jerr;
    json_t *obj = json_loadb(line, (size_t)len, 0, &jerr);
    const char *why = obj ? check_line(obj, m->n_exits) : jerr.text;
    if (why)
      warn_skipped(m, path, line_no, why, ++n_skipped);
    else if (append(m, obj) != 0)
      rc = -1, set_error(err, errlen, "%s: out of memory", path);
    json_decref(obj);
  }
  free(line);
  if (n_skipped > MAX_WARNINGS)
    warnf(m, "%s: %zu lines skipped in all", path, n_skipped);
  return rc;
}

static int read_metrics(const char *path, struct metrics *m, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    set_error(err, errlen, "%s: cannot read (%s)", path, strerror(errno));
    return -1;
  }
  int rc = read_lines(f, path, m, err, errlen);
  fclose(f);
  if (rc == 0 && m->n == 0) {
    set_error(err, errlen, "%s: no valid metrics line", path);
    rc = -1;
  }
  if (rc == 0) sort_and_dedupe(m);
  return rc;
}

/* ---- what to draw ---------------------------------------------------------- */

enum {
  WIDTH = 900, HEIGHT = 500,
  PLOT_L = 72, PLOT_T = 52, PLOT_R = 648, PLOT_B = 440,
  PLOT_W = PLOT_R - PLOT_L, PLOT_H = PLOT_B - PLOT_T,
  LEGEND_X = 670, LEGEND_W = 218,
  EMA_MIN_WINDOW = 2, STEPS_PER_EMA_WINDOW = 30
};


struct plot {
  const struct metrics *m;
  char *title;
  char **labels;           /* n_exits */
  double x0, x1, y0, y1;   /* data range of the plot area */
  size_t above, below;     /* values outside y0..y1 */
  double ema_window;       /* 0: training loss unsmoothed */
  double *xs, *ys, *ema;   /* scratch, n each */
  long long last_val_step; /* -1: no validation */
};

static double quantile(const double *sorted, size_t n, double q) {
  double pos = q * (double)(n - 1);
  size_t i = (size_t)pos;
  return i + 1 < n ? sorted[i] + (pos - (double)i) * (sorted[i + 1] - sorted[i]) : sorted[n - 1];
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Every loss value, sorted; with late_only those of steps past the first 10%. */
static double *collect(const struct plot *p, int late_only, size_t *count) {
  const struct metrics *m = p->m;
  double *all = malloc(m->n * 2 * m->n_exits * sizeof *all);
  if (!all) return NULL;
  size_t n = 0;
  double late = p->x0 + 0.1 * (p->x1 - p->x0);
  for (size_t i = 0; i < m->n; i++) {
    const struct record *r = &m->recs[i];
    if (late_only && (double)r->step < late) continue;
    for (unsigned k = 0; k < m->n_exits; k++) {
      all[n++] = train_of(m, r)[k];
      if (r->has_val) all[n++] = val_of(m, r)[k];
    }
  }
  qsort(all, n, sizeof *all, by_value);
  *count = n;
  return all;
}

/* The y range covers every value unless a few outliers (typically the first
 * steps' loss) would squash the rest: then it ends at the 2nd percentile of all
 * values and the 98th of those past the first 10% of steps. Padded by 5%. */
static int choose_y_range(struct plot *p) {
  size_t n_all, n_late;
  double *all = collect(p, 0, &n_all), *late = collect(p, 1, &n_late);
  int ok = all && late;
  if (ok) {
    double lo_q = quantile(all, n_all, 0.02);
    double hi_q = quantile(late, n_late, 0.98); /* never empty: it holds the last step */
    double body = hi_q - lo_q, lo = all[0], hi = all[n_all - 1];
    if (hi > hi_q + body) hi = hi_q;
    if (lo < lo_q - body) lo = lo_q;
    double pad = hi > lo ? 0.05 * (hi - lo) : fmax(0.1 * fabs(hi), 0.5);
    p->y0 = lo - pad, p->y1 = hi + pad;
    for (size_t i = 0; i < n_all; i++) p->below += all[i] < p->y0, p->above += all[i] > p->y1;
  }
  free(all);
  free(late);
  return ok ? 0 : -1;
}

static void choose_x_range(struct plot *p) {
  const struct metrics *m = p->m;
  p->x0 = (double)m->recs[0].step, p->x1 = (double)m->recs[m->n - 1].step;
  if (p->x0 == p->x1)
    p->x0 -= 1, p->x1 += 1;
  else if (p->x0 <= 0.1 * (p->x1 - p->x0))
    p->x0 = 0; /* start at 0 when nearly there */
  p->last_val_step = -1;
  for (size_t i = 0; i < m->n; i++)
    if (m->recs[i].has_val) p->last_val_step = m->recs[i].step;
}

/* "exit k (layer L)" / "final (layer N)" from the spec, else "exit k" / "final". */
static void default_label(char *buf, size_t size, const Eellm__Model *spec, unsigned k,
                          unsigned n_exits) {
  if (k + 1 < n_exits && spec)
    snprintf(buf, size, "exit %u (layer %u)", k, spec->exits[k]->layer);
  else if (k + 1 < n_exits)
    snprintf(buf, size, "exit %u", k);
  else if (spec)
    snprintf(buf, size, "final (layer %u)", spec->n_layers);
  else
    snprintf(buf, size, "final");
}

/* One name per exit: the given labels, else default_label's. */
static int choose_labels(struct plot *p, const Eellm__Model *spec, const char *const *labels,
                         size_t n_labels) {
  unsigned n = p->m->n_exits;
  if (spec && !n_labels && spec->n_exits + 1 != n) {
    warnf(p->m, "the model spec has %zu exits and a final head, the metrics %u heads; exits get "
                "generic labels", spec->n_exits, n);
    spec = NULL;
  }
  if (!(p->labels = calloc(n, sizeof *p->labels))) return -1;
  for (unsigned k = 0; k < n; k++) {
    char buf[64];
    default_label(buf, sizeof buf, spec, k, n);
    if (!(p->labels[k] = strdup(n_labels ? labels[k] : buf))) return -1;
  }
  return 0;
}

/* Name of the directory holding path: "run7" for "runs/run7/metrics.jsonl". */
static char *run_name(const char *path) {
  char *copy = strdup(path);
  char *dir = copy ? dirname(copy) : NULL;
  char *real = dir ? realpath(dir, NULL) : NULL;
  char *name = dir ? strdup(basename(real ? real : dir)) : NULL;
  free(real);
  free(copy);
  return name;
}

/* ---- SVG output ------------------------------------------------------------ */

static double px(const struct plot *p, double step) {
  return PLOT_L + (step - p->x0) / (p->x1 - p->x0) * PLOT_W;
}

/* Far outside values stay a bounded distance off the clipped plot area. */
static double py(const struct plot *p, double loss) {
  double y = PLOT_B - (loss - p->y0) / (p->y1 - p->y0) * PLOT_H;
  return fmin(fmax(y, PLOT_T - 4.0 * PLOT_H), PLOT_B + 4.0 * PLOT_H);
}

static void point(FILE *out, const struct plot *p, double x, double y) {
  fprintf(out, "%.1f,%.1f ", px(p, x), py(p, y));
}

/* A polyline through n points; past two points per pixel column only each
 * column's lowest and highest point are kept, in order, so spikes survive. */
static void polyline(FILE *out, const struct plot *p, const double *xs, const double *ys, size_t n,
                     const char *attrs) {
  fprintf(out, "<polyline %s points=\"", attrs);
  int thin = n > 2 * PLOT_W;
  for (size_t i = 0, j; i < n; i = j) {
    size_t lo = i, hi = i;
    long column = lround(px(p, xs[i]));
    for (j = i + 1; thin && j < n && lround(px(p, xs[j])) == column; j++) {
      if (ys[j] < ys[lo]) lo = j;
      if (ys[j] > ys[hi]) hi = j;
    }
    size_t first = lo < hi ? lo : hi, second = lo < hi ? hi : lo;
    point(out, p, xs[first], ys[first]);
    if (second != first) point(out, p, xs[second], ys[second]);
  }
  fputs("\"/>\n", out);
}

/* Debiased exponential moving average of ys into ema. */
static void smooth(const double *ys, size_t n, double window, double *ema) {
  double decay = 1.0 - 1.0 / window, sum = 0, weight = 0;
  for (size_t i = 0; i < n; i++) {
    sum = decay * sum + ys[i];
    weight = decay * weight + 1;
    ema[i] = sum / weight;
  }
}

static void draw_training(FILE *out, struct plot *p, unsigned k) {
  const struct metrics *m = p->m;
  for (size_t i = 0; i < m->n; i++)
    p->xs[i] = (double)m->recs[i].step, p->ys[i] = train_of(m, &m->recs[i])[k];
  if (p->ema_window) {
    polyline(out, p, p->xs, p->ys, m->n, "class=\"train-raw\" stroke-width=\"1\" stroke-opacity=\"0.22\"");
    smooth(p->ys, m->n, p->ema_window, p->ema);
    polyline(out, p, p->xs, p->ema, m->n, "class=\"train\" stroke-width=\"1.5\"");
  } else {
    polyline(out, p, p->xs, p->ys, m->n, "class=\"train\" stroke-width=\"1.5\"");
  }
}

static void draw_validation(FILE *out, struct plot *p, unsigned k, const char *colour) {
  const struct metrics *m = p->m;
  size_t n = 0;
  for (size_t i = 0; i < m->n; i++)
    if (m->recs[i].has_val)
      p->xs[n] = (double)m->recs[i].step, p->ys[n++] = val_of(m, &m->recs[i])[k];
  if (!n) return;
  polyline(out, p, p->xs, p->ys, n, "class=\"val\" stroke-width=\"2.5\" stroke-dasharray=\"7 4\"");
  fprintf(out, "<g class=\"val-dots\" fill=\"%s\" stroke=\"#ffffff\" stroke-width=\"1\">\n", colour);
  for (size_t i = 0; i < n; i++)
    fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\"/>\n", px(p, p->xs[i]), py(p, p->ys[i]));
  fputs("</g>\n", out);
}

static void draw_series(FILE *out, struct plot *p) {
  fputs("<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-linejoin=\"round\">\n", out);
  for (unsigned k = 0; k < p->m->n_exits; k++) {
    const char *colour = eellm_svg_colour(k);
    fprintf(out, "<g class=\"exit exit-%u\" stroke=\"%s\">\n", k, colour);
    draw_training(out, p, k);
    draw_validation(out, p, k, colour);
    fputs("</g>\n", out);
  }
  fputs("</g>\n", out);
}

static void format_step(char *buf, size_t n, double v, double x1) {
  if (x1 >= 10000 && v != 0)
    snprintf(buf, n, "%gk", v / 1000);
  else
    snprintf(buf, n, "%.0f", v);
}

static void draw_x_axis(FILE *out, const struct plot *p) {
  double step = fmax(1, eellm_svg_tick_step(p->x1 - p->x0, 8));
  for (double i = ceil(p->x0 / step); i * step <= p->x1 + 1e-9 * step; i++) {
    double x = px(p, i * step);
    char label[32];
    format_step(label, sizeof label, i * step, p->x1);
    fprintf(out, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e6e6e6\"/>\n", x,
            PLOT_T, x, PLOT_B);
    fprintf(out, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#444444\"/>\n", x,
            PLOT_B, x, PLOT_B + 5);
    eellm_svg_text(out, x, PLOT_B + 19, 11, 80, "text-anchor=\"middle\" fill=\"#333333\"", label);
  }
  eellm_svg_text(out, PLOT_L + PLOT_W / 2.0, PLOT_B + 42, 13, PLOT_W, "text-anchor=\"middle\"", "step");
}

static void draw_y_axis(FILE *out, const struct plot *p) {
  double step = eellm_svg_tick_step(p->y1 - p->y0, 6);
  int decimals = step >= 1 ? 0 : (int)fmin(10, ceil(-log10(step) - 1e-9));
  for (double i = ceil(p->y0 / step); i * step <= p->y1; i++) {
    double y = py(p, i * step);
    char label[32];
    snprintf(label, sizeof label, "%.*f", decimals, i * step);
    fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e6e6e6\"/>\n", PLOT_L,
            y, PLOT_R, y);
    fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#444444\"/>\n",
            PLOT_L - 5, y, PLOT_L, y);
    eellm_svg_text(out, PLOT_L - 8, y + 4, 11, PLOT_L - 26, "text-anchor=\"end\" fill=\"#333333\"", label);
  }
  char rotate[64];
  snprintf(rotate, sizeof rotate, "text-anchor=\"middle\" transform=\"rotate(-90 %d %d)\"", 20,
           (PLOT_T + PLOT_B) / 2);
  eellm_svg_text(out, 20, (PLOT_T + PLOT_B) / 2.0, 13, PLOT_H, rotate, "loss (nats/token)");
}

/* Notes, above and below the plot area, how many values lie beyond the y range. */
static void draw_clip_notes(FILE *out, const struct plot *p) {
  char note[96];
  const char *attrs = "class=\"clip-note\" text-anchor=\"end\" fill=\"#666666\"";
  if (p->above) {
    snprintf(note, sizeof note, "\xe2\x86\x91 %zu values above %.3g not shown", p->above, p->y1);
    eellm_svg_text(out, PLOT_R, PLOT_T - 7, 11, PLOT_W, attrs, note);
  }
  if (p->below) {
    snprintf(note, sizeof note, "\xe2\x86\x93 %zu values below %.3g not shown", p->below, p->y0);
    eellm_svg_text(out, PLOT_R, PLOT_B + 42, 11, PLOT_W / 2.0 - 30, attrs, note);
  }
}

/* Grey samples of the two line styles. */
static void draw_legend_key(FILE *out, const struct plot *p, double y) {
  fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#555555\" "
               "stroke-width=\"1.5\"/>\n", LEGEND_X, y - 4, LEGEND_X + 24, y - 4);
  eellm_svg_text(out, LEGEND_X + 32, y, 12, LEGEND_W - 32, "",
       p->ema_window ? "train loss (EMA over raw)" : "train loss");
  y += 20;
  fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#555555\" "
               "stroke-width=\"2.5\" stroke-dasharray=\"7 4\"/>\n"
               "<circle cx=\"%d\" cy=\"%.1f\" r=\"3.5\" fill=\"#555555\"/>\n",
          LEGEND_X, y - 4, LEGEND_X + 24, y - 4, LEGEND_X + 12, y - 4);
  eellm_svg_text(out, LEGEND_X + 32, y, 12, LEGEND_W - 32, "", "validation loss");
}

/* Per exit: colour, label and final validation loss (else last training loss). */
static void draw_legend(FILE *out, const struct plot *p) {
  const struct metrics *m = p->m;
  draw_legend_key(out, p, PLOT_T + 8);
  double y = PLOT_T + 68, row = fmin(20, (HEIGHT - 12 - y) / m->n_exits);
  double font = fmin(12, 0.65 * row), right = LEGEND_X + LEGEND_W;
  char header[64];
  long long at = p->last_val_step >= 0 ? p->last_val_step : m->recs[m->n - 1].step;
  snprintf(header, sizeof header, "%s loss at step %lld",
           p->last_val_step >= 0 ? "validation" : "train", at);
  eellm_svg_text(out, right, y, 11, LEGEND_W, "text-anchor=\"end\" fill=\"#555555\"", header);
  const struct record *last = &m->recs[m->n - 1];
  for (size_t i = 0; i < m->n; i++)
    if (m->recs[i].step == at) last = &m->recs[i];
  for (unsigned k = 0; k < m->n_exits; k++) {
    y += row;
    const char *colour = eellm_svg_colour(k);
    fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" "
                 "stroke-width=\"3\"/>\n", LEGEND_X, y - 4, LEGEND_X + 24, y - 4, colour);
    eellm_svg_text(out, LEGEND_X + 32, y, font, LEGEND_W - 32 - 52, "class=\"legend-label\"", p->labels[k]);
    char value[32];
    snprintf(value, sizeof value, "%.3f",
             p->last_val_step >= 0 ? val_of(m, last)[k] : train_of(m, last)[k]);
    eellm_svg_text(out, right, y, font, 52, "class=\"legend-value\" text-anchor=\"end\"", value);
  }
}

static void draw_frame_and_title(FILE *out, const struct plot *p) {
  fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
               "stroke=\"#444444\"/>\n", PLOT_L, PLOT_T, PLOT_W, PLOT_H);
  eellm_svg_text(out, PLOT_L, 30, 17, 440, "class=\"title\" font-weight=\"bold\"", p->title);
  char subtitle[96];
  snprintf(subtitle, sizeof subtitle, "loss per exit, steps %lld\xe2\x80\x93%lld, %zu logged",
           p->m->recs[0].step, p->m->recs[p->m->n - 1].step, p->m->n);
  eellm_svg_text(out, WIDTH - 12, 30, 12, 330, "text-anchor=\"end\" fill=\"#555555\"", subtitle);
}

static void draw(FILE *out, struct plot *p) {
  fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
               "<title>", WIDTH, HEIGHT, WIDTH, HEIGHT);
  eellm_svg_xml(out, p->title);
  fprintf(out, ": loss per exit</title>\n"
               "<defs><clipPath id=\"plot-area\"><rect x=\"%d\" y=\"%d\" width=\"%d\" "
               "height=\"%d\"/></clipPath></defs>\n"
               "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n",
          PLOT_L, PLOT_T, PLOT_W, PLOT_H, WIDTH, HEIGHT);
  draw_x_axis(out, p);
  draw_y_axis(out, p);
  draw_series(out, p);
  draw_clip_notes(out, p);
  draw_frame_and_title(out, p);
  draw_legend(out, p);
  fputs("</svg>\n", out);
}

/* Draws into an atomic output file; errors read "PATH: cannot write (why)". */
static int write_svg(const char *path, struct plot *p, char *err, size_t errlen) {
  struct eellm_outfile out;
  int ok = eellm_outfile_open(&out, path, NULL, 0) == 0;
  if (ok) {
    draw(out.fp, p);
    ok = eellm_outfile_commit(&out, NULL, 0) == 0;
  }
  if (!ok) set_error(err, errlen, "%s: cannot write (%s)", path, strerror(errno));
  return ok ? 0 : -1;
}

static void free_plot(struct plot *p) {
  if (p->labels)
    for (unsigned k = 0; k < p->m->n_exits; k++) free(p->labels[k]);
  free(p->labels);
  free(p->title);
  free(p->xs);
  free(p->ys);
  free(p->ema);
}

static int prepare(struct plot *p, const char *metrics_path, const Eellm__Model *spec,
                   const char *const *labels, size_t n_labels, char *err, size_t errlen) {
  size_t n = p->m->n;
  if (n_labels && n_labels != p->m->n_exits) {
    set_error(err, errlen, "%s: %zu labels given for %u exits (the final head included)",
              metrics_path, n_labels, p->m->n_exits);
    return -1;
  }
  choose_x_range(p);
  double window = (double)n / STEPS_PER_EMA_WINDOW;
  p->ema_window = window >= EMA_MIN_WINDOW ? window : 0;
  p->title = run_name(metrics_path);
  p->xs = malloc(n * sizeof *p->xs);
  p->ys = malloc(n * sizeof *p->ys);
  p->ema = malloc(n * sizeof *p->ema);
  if (!p->title || !p->xs || !p->ys || !p->ema || choose_y_range(p) != 0 ||
      choose_labels(p, spec, labels, n_labels) != 0) {
    set_error(err, errlen, "%s: out of memory", metrics_path);
    return -1;
  }
  return 0;
}

int eellm_plot_metrics(const char *metrics_path, const char *svg_path, const Eellm__Model *spec,
                       const char *const *labels, size_t n_labels,
                       void (*warn)(void *ctx, const char *message), void *warn_ctx, char *err,
                       size_t errlen) {
  struct metrics m = {.warn = warn, .warn_ctx = warn_ctx};
  struct plot p = {.m = &m};
  int rc = read_metrics(metrics_path, &m, err, errlen);
  if (rc == 0) rc = prepare(&p, metrics_path, spec, labels, n_labels, err, errlen);
  if (rc == 0) rc = write_svg(svg_path, &p, err, errlen);
  free_plot(&p);
  free(m.recs);
  free(m.values);
  return rc;
}
