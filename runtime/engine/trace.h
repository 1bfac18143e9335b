/* Task traces: every task eellm submits while a trace records, with its kind,
 * micro-batch, layer and training step, the worker that ran it and its submit,
 * start and end times (StarPU's profiling info). Written when the trace stops,
 * as Chrome Trace Event JSON (Perfetto, chrome://tracing, `eellm trace`) or as
 * Paje (ViTE, pajeng).
 *
 * Each task's callback appends one event to the buffer of the worker thread
 * that ran it (one writer per buffer, no lock). Nothing is hooked into
 * eellm_submit while no trace records.
 *
 * Several ranks: every rank calls eellm_trace_start right after a barrier
 * (times count from that call) and writes its own file; `eellm trace` reads
 * the ranks' files together. eellm_trace_set_clock_offset corrects a rank's
 * times for a measured skew against rank 0. */
#ifndef EELLM_RUNTIME_TRACE_H
#define EELLM_RUNTIME_TRACE_H

#include <stddef.h>

struct eellm_task_info;

enum eellm_trace_format { EELLM_TRACE_CHROME = 0, EELLM_TRACE_PAJE = 1 };

/* "chrome" or "paje": 0, else -1. */
int eellm_trace_format_parse(const char *name, enum eellm_trace_format *format);

/* The file rank `rank` of n_ranks writes for `path`: path itself for a single
 * rank, else path with ".rank<N>" before its extension (t.json -> t.rank1.json). */
void eellm_trace_rank_path(const char *path, int rank, int n_ranks, char *out, size_t outlen);

/* Starts recording the tasks submitted from now on; StarPU must be running
 * (profiling is switched on until eellm_trace_stop). Checks that the file can
 * be created. 0, or -1 with a one-line message in err. */
int eellm_trace_start(const char *path, enum eellm_trace_format format, int rank, int n_ranks,
                      char *err, size_t errlen);

/* Adds offset_us to every time this rank writes (aligns its clock on rank 0's). */
void eellm_trace_set_clock_offset(double offset_us);

/* Tags the tasks submitted from now on with training step `step` (-1: outside
 * any step, e.g. validation). The trace's figures are computed per step. */
void eellm_trace_set_step(int step);

/* Waits for every submitted task, stops recording and writes the file
 * atomically. Returns the number of tasks written (0 when no trace recorded),
 * or -1 with a one-line message in err. Call it before StarPU shuts down. */
long eellm_trace_stop(char *err, size_t errlen);

/* For eellm_submit: NULL when no trace records; else a malloc'd record to pass
 * with STARPU_CALLBACK_WITH_ARG (StarPU frees it) and eellm_trace_task_done
 * as the task's callback. */
void *eellm_trace_task_arg(const struct eellm_task_info *info);
void eellm_trace_task_done(void *arg);

/* Task kinds (enum eellm_task_kind) in trace files: "forward", "backward",
 * "exit", "loss", "optimizer", "collective", "transfer", "other"; each with a
 * colour ("#rrggbb") shared by the Paje file and the HTML report. */
const char *eellm_trace_kind_name(int kind);
const char *eellm_trace_kind_color(int kind);
/* The kind named `name`, or -1. */
int eellm_trace_kind_parse(const char *name);

#endif
