/* Loss curves of a training run: metrics.jsonl drawn as a self-contained SVG. */
#ifndef EELLM_PLOT_H
#define EELLM_PLOT_H

#include <stddef.h>

#include "eellm.h"

/* Reads metrics_path (one JSON object per step: "step", "loss" and on
 * evaluation steps "val_loss", one entry per exit, final head last) and writes
 * svg_path atomically (temp file, fsync, rename): per exit the training loss
 * (raw and smoothed) and the validation loss, titled with the name of the
 * metrics file's directory. Lines that are not such objects are skipped with a
 * warning on stderr; of a step logged twice the last line counts.
 * Labels: n_labels > 0 names every exit (a different count is an error); else
 * spec (may be NULL) gives "exit k (layer L)" and "final (layer N)" when its
 * exits match the metrics; else "exit 0", "exit 1", ..., "final".
 * Returns 0, or -1 with a one-line error in err (missing or unreadable file, no
 * valid line, wrong label count, unwritable output). */
int eellm_plot_metrics(const char *metrics_path, const char *svg_path, const Eellm__Model *spec,
                       const char *const *labels, size_t n_labels, char *err, size_t errlen);

#endif
