/* Trace files: Chrome Trace Event JSON and Paje. */
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "runtime/engine/trace.h"
#include "runtime/engine/trace_impl.h"

enum { EXIT_LAYER_BASE = 1000 }; /* task infos give exit k the layer 1000 + k */

static double at_us(const struct trace_content *c, double starpu_us) {
  return starpu_us - c->origin_us + c->offset_us;
}

/* Layer and exit index of a task: exits carry 1000 + k as their layer. */
static int layer_of(const struct trace_event *e) {
  return e->layer >= EXIT_LAYER_BASE ? -1 : e->layer;
}
static int exit_of(const struct trace_event *e) {
  return e->layer >= EXIT_LAYER_BASE ? e->layer - EXIT_LAYER_BASE : -1;
}

static void json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
    else if (ch < 0x20) fprintf(out, "\\u%04x", ch);
    else fputc(ch, out);
  }
  fputc('"', out);
}

/* ---- Chrome Trace Event JSON ------------------------------------------------ */

static void chrome_header(FILE *out, const struct trace_content *c) {
  fprintf(out, "{\"displayTimeUnit\": \"ms\",\n\"otherData\": {\"generator\": \"eellm\", "
               "\"format_version\": 1, \"rank\": %d, \"n_ranks\": %d, \"clock_offset_us\": %.3f, "
               "\"workers\": [",
          c->rank, c->n_ranks, c->offset_us);
  for (int w = 0; w < c->n_workers; w++) {
    fprintf(out, "%s\n  {\"id\": %d, \"name\": ", w ? "," : "", w);
    json_string(out, c->workers[w].name);
    fprintf(out, ", \"starpu_executed_tasks\": %u, \"starpu_executing_us\": %.3f}",
            c->workers[w].executed_tasks, c->workers[w].executing_us);
  }
  fprintf(out, "]},\n\"traceEvents\": [\n");
  fprintf(out, "{\"ph\": \"M\", \"name\": \"process_name\", \"pid\": %d, \"tid\": 0, "
               "\"args\": {\"name\": \"rank %d\"}},\n",
          c->rank, c->rank);
  fprintf(out, "{\"ph\": \"M\", \"name\": \"process_sort_index\", \"pid\": %d, \"tid\": 0, "
               "\"args\": {\"sort_index\": %d}}",
          c->rank, c->rank);
  for (int w = 0; w < c->n_workers; w++) {
    fprintf(out, ",\n{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": %d, \"tid\": %d, "
                 "\"args\": {\"name\": ",
            c->rank, w);
    json_string(out, c->workers[w].name);
    fprintf(out, "}},\n{\"ph\": \"M\", \"name\": \"thread_sort_index\", \"pid\": %d, "
                 "\"tid\": %d, \"args\": {\"sort_index\": %d}}",
            c->rank, w, w);
  }
}

static void chrome_event(FILE *out, const struct trace_content *c, const struct trace_event *e) {
  const char *kind = eellm_trace_kind_name(e->kind);
  fputs(",\n{\"ph\": \"X\", \"name\": ", out);
  json_string(out, e->name ? e->name : "task");
  fprintf(out,
          ", \"cat\": \"%s\", \"pid\": %d, \"tid\": %d, \"ts\": %.3f, \"dur\": %.3f, "
          "\"args\": {\"kind\": \"%s\", \"step\": %d, \"micro\": %d, \"layer\": %d, "
          "\"exit\": %d, \"priority\": %d, \"submit_us\": %.3f",
          kind, c->rank, e->worker, at_us(c, e->start_us), e->end_us - e->start_us, kind, e->step,
          e->micro, layer_of(e), exit_of(e), e->priority, at_us(c, e->submit_us));
  if (e->flops > 0) fprintf(out, ", \"flops\": %.0f", e->flops);
  fputs("}}", out);
}

int trace_write_chrome(FILE *out, const struct trace_content *c) {
  chrome_header(out, c);
  for (size_t i = 0; i < c->n_events; i++) chrome_event(out, c, &c->events[i]);
  fputs("\n]}\n", out);
  return ferror(out) ? -1 : 0;
}

/* ---- Paje (times in milliseconds, as StarPU's own Paje traces) -------------- */

static const char paje_header[] =
    "%EventDef PajeDefineContainerType 0\n%\tAlias string\n%\tType string\n%\tName string\n"
    "%EndEventDef\n"
    "%EventDef PajeDefineStateType 1\n%\tAlias string\n%\tType string\n%\tName string\n"
    "%EndEventDef\n"
    "%EventDef PajeDefineEntityValue 2\n%\tAlias string\n%\tType string\n%\tName string\n"
    "%\tColor color\n%EndEventDef\n"
    "%EventDef PajeCreateContainer 3\n%\tTime date\n%\tAlias string\n%\tType string\n"
    "%\tContainer string\n%\tName string\n%EndEventDef\n"
    "%EventDef PajeDestroyContainer 4\n%\tTime date\n%\tType string\n%\tName string\n"
    "%EndEventDef\n"
    "%EventDef PajePushState 5\n%\tTime date\n%\tType string\n%\tContainer string\n"
    "%\tValue string\n%\tTask string\n%\tStep int\n%\tMicro int\n%\tLayer int\n%\tExit int\n"
    "%EndEventDef\n"
    "%EventDef PajePopState 6\n%\tTime date\n%\tType string\n%\tContainer string\n"
    "%EndEventDef\n";

/* One end of a task's state: pushed at its start, popped at its end. */
struct edge {
  double ms;
  size_t event;
  int pop;
};

static int by_time(const void *a, const void *b) {
  const struct edge *x = a, *y = b;
  if (x->ms != y->ms) return (x->ms > y->ms) - (x->ms < y->ms);
  return y->pop - x->pop; /* at equal times, a worker's previous task ends first */
}

static double at_ms(const struct trace_content *c, double starpu_us) {
  return at_us(c, starpu_us) / 1000;
}

static void paje_types(FILE *out, const struct trace_content *c, double first_ms) {
  fputs(paje_header, out);
  fputs("0 CT_Rank 0 \"Rank\"\n0 CT_Worker CT_Rank \"Worker\"\n1 ST_Task CT_Worker \"Task\"\n",
        out);
  for (int k = 0; k < EELLM_N_KINDS; k++) {
    unsigned rgb = (unsigned)strtoul(eellm_trace_kind_color(k) + 1, NULL, 16);
    fprintf(out, "2 %s ST_Task \"%s\" \"%.3f %.3f %.3f\"\n", eellm_trace_kind_name(k),
            eellm_trace_kind_name(k), (rgb >> 16) / 255.0, (rgb >> 8 & 255) / 255.0,
            (rgb & 255) / 255.0);
  }
  fprintf(out, "3 %.6f r%d CT_Rank 0 \"rank %d\"\n", first_ms, c->rank, c->rank);
  for (int w = 0; w < c->n_workers; w++)
    fprintf(out, "3 %.6f r%dw%d CT_Worker r%d \"%s\"\n", first_ms, c->rank, w, c->rank,
            c->workers[w].name);
}

static void paje_edge(FILE *out, const struct trace_content *c, const struct edge *edge) {
  const struct trace_event *e = &c->events[edge->event];
  if (edge->pop) {
    fprintf(out, "6 %.6f ST_Task r%dw%d\n", edge->ms, c->rank, e->worker);
    return;
  }
  fprintf(out, "5 %.6f ST_Task r%dw%d %s \"%s\" %d %d %d %d\n", edge->ms, c->rank, e->worker,
          eellm_trace_kind_name(e->kind), e->name ? e->name : "task", e->step, e->micro,
          layer_of(e), exit_of(e));
}

int trace_write_paje(FILE *out, const struct trace_content *c) {
  struct edge *edges = malloc((2 * c->n_events + 1) * sizeof *edges);
  if (!edges) return -1;
  double first_ms = 0, last_ms = 0;
  for (size_t i = 0; i < c->n_events; i++) {
    edges[2 * i] = (struct edge){at_ms(c, c->events[i].start_us), i, 0};
    edges[2 * i + 1] = (struct edge){at_ms(c, c->events[i].end_us), i, 1};
    if (edges[2 * i].ms < first_ms) first_ms = edges[2 * i].ms;
    if (edges[2 * i + 1].ms > last_ms) last_ms = edges[2 * i + 1].ms;
  }
  qsort(edges, 2 * c->n_events, sizeof *edges, by_time);
  paje_types(out, c, first_ms);
  for (size_t i = 0; i < 2 * c->n_events; i++) paje_edge(out, c, &edges[i]);
  for (int w = 0; w < c->n_workers; w++)
    fprintf(out, "4 %.6f CT_Worker r%dw%d\n", last_ms, c->rank, w);
  fprintf(out, "4 %.6f CT_Rank r%d\n", last_ms, c->rank);
  free(edges);
  return ferror(out) ? -1 : 0;
}
