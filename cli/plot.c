/* eellm plot: draw a run's training and validation loss per exit as an SVG. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include <eellm.h>
#include <eellm/train.h>

static const char plot_usage[] =
    "usage: eellm plot RUN_DIR [-o OUT.svg] [--labels \"layer 2,layer 4,final\"]\n"
    "\n"
    "Draws RUN_DIR/metrics.jsonl (written by 'eellm train --out RUN_DIR') as an SVG:\n"
    "per exit the training loss (smoothed over a faint raw line on long runs) and the\n"
    "validation loss (dashed, with dots), and each exit's final validation loss in the\n"
    "legend. Lines that are not valid JSON objects are skipped with a warning; of a\n"
    "step logged twice the last line counts.\n"
    "\n"
    "  -o, --output OUT.svg  where to write the plot (default RUN_DIR/loss.svg)\n"
    "  --labels A,B,...      one name per exit, the final head last (default from\n"
    "                        RUN_DIR/model.txtpb: 'exit k (layer L)', 'final (layer N)';\n"
    "                        without it 'exit 0', 'exit 1', ..., 'final')\n"
    "\n"
    "Exit status: 0 written, 2 bad usage, missing or empty metrics, or unwritable\n"
    "output (one line on stderr).\n";

/* RUN_DIR/name, without doubling a trailing slash. */
static char *join(const char *dir, const char *name) {
  size_t len = strlen(dir);
  while (len > 1 && dir[len - 1] == '/') len--;
  size_t size = len + strlen(name) + 2;
  char *path = malloc(size);
  if (path) snprintf(path, size, "%.*s/%s", (int)len, dir, name);
  return path;
}

/* Splits a comma-separated list in place: *n pointers into text. */
static char **split_labels(char *text, size_t *n) {
  *n = 1;
  for (const char *c = text; *c; c++) *n += *c == ',';
  char **labels = malloc(*n * sizeof *labels);
  if (!labels) return NULL;
  for (size_t i = 0; i < *n; i++) {
    labels[i] = text;
    text += strcspn(text, ",");
    if (*text) *text++ = '\0';
  }
  return labels;
}

/* The run's model spec for exit labels; NULL (with a warning if it is bad) without. */
static Eellm__Model *run_spec(const char *run_dir) {
  char *path = join(run_dir, "model.txtpb");
  Eellm__Model *spec = NULL;
  if (path && access(path, F_OK) == 0) {
    char err[512];
    spec = eellm_model_spec_load(path, err, sizeof err);
    if (!spec) fprintf(stderr, "eellm plot: warning: %s; exits get generic labels\n", err);
  }
  free(path);
  return spec;
}

/* The library's warnings (skipped lines, unusable spec labels), one a line. */
static void warn(void *ctx, const char *message) {
  (void)ctx;
  fprintf(stderr, "warning: %s\n", message);
}

static int plot_run(const char *run_dir, const char *out_path, char *labels_text) {
  struct stat st;
  if (stat(run_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "eellm plot: %s: no such run directory\n", run_dir);
    return 2;
  }
  char *metrics = join(run_dir, "metrics.jsonl");
  char *svg = out_path ? strdup(out_path) : join(run_dir, "loss.svg");
  size_t n_labels = 0;
  char **labels = labels_text ? split_labels(labels_text, &n_labels) : NULL;
  Eellm__Model *spec = labels_text ? NULL : run_spec(run_dir);
  char err[1024];
  int status = 2;
  if (!metrics || !svg || (labels_text && !labels))
    fprintf(stderr, "eellm plot: out of memory\n");
  else if (eellm_plot_metrics(metrics, svg, spec, (const char *const *)labels, n_labels, warn,
                              NULL, err, sizeof err) != 0)
    fprintf(stderr, "eellm plot: %s\n", err);
  else
    status = 0, printf("wrote %s\n", svg);
  eellm_model_spec_free(spec);
  free(labels);
  free(svg);
  free(metrics);
  return status;
}

int cmd_plot(int argc, char **argv) {
  static const struct option options[] = {{"output", required_argument, 0, 'o'},
                                          {"labels", required_argument, 0, 'l'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  const char *out_path = NULL;
  char *labels_text = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
    switch (opt) {
      case 'o': out_path = optarg; break;
      case 'l': labels_text = optarg; break;
      case 'h': fputs(plot_usage, stdout); return 0;
      default: fputs(plot_usage, stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fputs(plot_usage, stderr);
    return 2;
  }
  return plot_run(argv[optind], out_path, labels_text);
}
