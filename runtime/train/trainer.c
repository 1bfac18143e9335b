#include "eellm/train.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eellm.h"
#include "eellm/outfile.h"
#include "eellm/tokenizer.h"
#include "eellm/tokens.h"
#include "runtime/engine/mpi.h"
#include "runtime/train/dataloader.h"

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Everything one run holds. */
struct run {
  const struct eellm_train_options *o;
  Eellm__Model *spec;
  Eellm__Train *train;
  struct eellm_token_file *data, *val;
  eellm_model *model;
  unsigned micro_batch, seq_len, n_micro, n_exits, steps;
  int32_t *tokens, *targets;     /* n_micro (or eval_batches) x micro_batch x seq_len */
  float *weights;                /* per exit */
  char ckpt[4096], metrics[4096];
  FILE *metrics_out;
  unsigned saved_step;    /* the step of the checkpoint on disk, 0 if none */
  unsigned skipped_steps; /* updates skipped by skip_nonfinite, resumed runs included */
};

/* The caller's error buffer for the run under way: one run per process at a
 * time, as the signal handlers are process-wide too. */
static char *run_err;
static size_t run_errlen;
static const struct eellm_train_options *run_options;

static int fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The run's one-line error; the first failure is the one reported. Under MPI
 * every rank meets the same bad input, so rank 0 alone reports it; runtime
 * failures are reported by the rank they hit. */
static int fail(int status, const char *fmt, ...) {
  if (eellm_rank() != 0 && status != 1) return status;
  if (!run_err || !run_errlen || run_err[0]) return status;
  int at = 0;
  if (eellm_rank() != 0) at = snprintf(run_err, run_errlen, "rank %d: ", eellm_rank());
  if (at < 0 || (size_t)at >= run_errlen) return status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(run_err + at, run_errlen - at, fmt, ap);
  va_end(ap);
  struct eellm_train_event e = {.kind = EELLM_TRAIN_FAILED, .message = run_err};
  if (run_options && run_options->on_event) run_options->on_event(run_options->ctx, &e);
  return status;
}

/* Hands an event to the caller's callback. */
static void report(const struct run *r, struct eellm_train_event *e) {
  if (r->o->on_event) r->o->on_event(r->o->ctx, e);
}

/* ---- set-up ---------------------------------------------------------------- */

static int ensure_out_dir(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s", dir);
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(path, 0777) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(path, 0777) != 0 && errno != EEXIST) return -1;
  return access(path, W_OK | X_OK);
}

static struct eellm_token_file *open_tokens(const char *path, const Eellm__Model *spec,
                                            unsigned seq_len, char *err, size_t errlen) {
  struct eellm_token_file *f = eellm_tokens_open(path, err, errlen);
  if (!f) return NULL;
  if (f->info.vocab_size > spec->vocab_size) {
    snprintf(err, errlen, "%s: tokenizer vocabulary %u exceeds the model's vocab_size %u", path,
             f->info.vocab_size, spec->vocab_size);
  } else if ((size_t)f->count < (size_t)seq_len + 1) {
    snprintf(err, errlen, "%s: %zu tokens, shorter than one sequence of %u tokens plus its target",
             path, (size_t)f->count, seq_len);
  } else {
    return f;
  }
  eellm_tokens_close(f);
  return NULL;
}

/* The model spec: --model, else the one stored in --init or in the run's checkpoint. */
static Eellm__Model *load_model_spec(struct run *r, char *err, size_t errlen) {
  const struct eellm_train_options *o = r->o;
  if (o->model_path) return eellm_model_spec_load(o->model_path, err, errlen);
  const char *from = o->init_path ? o->init_path : o->resume ? r->ckpt : NULL;
  if (!from) {
    snprintf(err, errlen, "--model is required unless --init or --resume gives a checkpoint");
    return NULL;
  }
  return eellm_checkpoint_spec(from, err, errlen);
}

/* A checkpoint must hold exactly the spec being trained. */
static int check_same_spec(const char *ckpt, const Eellm__Model *spec, const char *spec_name,
                           char *err, size_t errlen) {
  Eellm__Model *stored = eellm_checkpoint_spec(ckpt, err, errlen);
  if (!stored) return -1;
  char field[256];
  int differs = eellm_spec_diff(&stored->base, &spec->base, field, sizeof field);
  if (differs)
    snprintf(err, errlen, "%s: its model spec differs from %s in field '%s'", ckpt, spec_name,
             field);
  eellm_model_spec_free(stored);
  return differs ? -1 : 0;
}

/* Ranks the training spec's parallelism needs, checked against the ranks there are. */
static int check_ranks(const struct run *r) {
  const Eellm__Parallelism *par = r->train->parallelism;
  unsigned pp = par ? par->pp : 1, tp = par ? par->tp : 1, dp = par ? par->dp : 1;
  uint64_t need = (uint64_t)pp * tp * dp;
  if (need == (uint64_t)eellm_nranks()) return 0;
  if (!eellm_mpi_active())
    return fail(2,
                "%s: parallelism pp %u x tp %u x dp %u needs %llu ranks: start it with mpirun "
                "-np %llu (scripts/eellm-mpirun)",
                r->o->train_path, pp, tp, dp, (unsigned long long)need, (unsigned long long)need);
  return fail(2, "%s: parallelism pp %u x tp %u x dp %u needs %llu ranks, mpirun started %d",
              r->o->train_path, pp, tp, dp, (unsigned long long)need, eellm_nranks());
}

/* Everything that needs no other rank: specs, data, the run directory (rank 0). */
static int setup_inputs(struct run *r) {
  const struct eellm_train_options *o = r->o;
  char err[8192]; /* room for paths of up to 4 KiB */
  snprintf(r->ckpt, sizeof r->ckpt, "%s/checkpoint.safetensors", o->out_dir);
  snprintf(r->metrics, sizeof r->metrics, "%s/metrics.jsonl", o->out_dir);
  if (!(r->spec = load_model_spec(r, err, sizeof err))) return fail(2, "%s", err);
  if (!(r->train = eellm_train_spec_load(o->train_path, r->spec, err, sizeof err)))
    return fail(2, "%s", err);
  int status = check_ranks(r);
  if (status) return status;
  r->seq_len = r->train->seq_len ? r->train->seq_len : r->spec->context_length;
  r->n_micro = r->train->micro_batches;
  r->micro_batch = r->train->global_batch / r->n_micro;
  r->steps = o->steps ? o->steps : r->train->steps;
  if (!(r->data = open_tokens(o->data_path, r->spec, r->seq_len, err, sizeof err)))
    return fail(2, "%s", err);
  if (o->val_path && !(r->val = open_tokens(o->val_path, r->spec, r->seq_len, err, sizeof err)))
    return fail(2, "%s", err);
  if (eellm_rank() == 0 && ensure_out_dir(o->out_dir) != 0)
    return fail(2, "%s: cannot create or write the output directory (%s)", o->out_dir,
                strerror(errno));
  /* Temporary checkpoints of killed runs: a resume or a new run clears them. */
  if (eellm_rank() == 0) eellm_outfile_remove_stale(r->ckpt);
  int have_ckpt = access(r->ckpt, F_OK) == 0;
  if (o->resume && !have_ckpt) return fail(2, "%s: no checkpoint to resume from", r->ckpt);
  if (!o->resume && have_ckpt)
    return fail(2, "%s already holds a run (%s); pass --resume to continue it or choose another --out",
                o->out_dir, r->ckpt);
  const char *spec_name = o->model_path ? o->model_path : "the checkpoint";
  if (o->resume && check_same_spec(r->ckpt, r->spec, spec_name, err, sizeof err) != 0)
    return fail(2, "%s", err);
  if (o->init_path && check_same_spec(o->init_path, r->spec, spec_name, err, sizeof err) != 0)
    return fail(2, "%s", err);
  if (o->tune_exits && r->spec->n_exits == 0)
    return fail(2, "--tune-exits: the model has no exits to tune");
  r->n_exits = r->spec->n_exits + 1;
  unsigned buffers = r->n_micro > r->train->eval_batches ? r->n_micro : r->train->eval_batches;
  size_t rows = (size_t)buffers * r->micro_batch * r->seq_len;
  r->tokens = malloc(rows * sizeof *r->tokens);
  r->targets = malloc(rows * sizeof *r->targets);
  r->weights = malloc(r->n_exits * sizeof *r->weights);
  if (!r->tokens || !r->targets || !r->weights) return fail(1, "out of memory");
  return 0;
}

/* StarPU (-MPI), the model's data on every stage, and its weights. */
static int setup_model(struct run *r, struct eellm_train_state *state) {
  const struct eellm_train_options *o = r->o;
  const Eellm__Parallelism *par = r->train->parallelism;
  char err[8192];
  if (eellm_runtime_start(err, sizeof err) != 0) return fail(1, "%s", err);
  r->model = eellm_model_create_parallel(r->spec, r->micro_batch, r->seq_len, par, err, sizeof err);
  if (!r->model) return fail(1, "%s", err);
  state->seed = r->train->seed;
  state->step = 0;
  int status = 0;
  if (o->resume)
    status = eellm_model_load_checkpoint(r->model, r->ckpt, state, err, sizeof err);
  else if (o->init_path)
    status = eellm_model_load(r->model, o->init_path, err, sizeof err);
  else
    eellm_model_init(r->model, r->train->seed);
  if (status != 0) return fail(2, "%s", err);
  eellm_model_set_tokenizer(r->model, eellm_tokenizer_name(r->data->info.tokenizer));
  if (o->tune_exits) eellm_model_freeze_backbone(r->model);
  return 0;
}

/* ---- one step ------------------------------------------------------------- */

static size_t micro_rows(const struct run *r) { return (size_t)r->micro_batch * r->seq_len; }

static struct eellm_loader loader_of(const struct run *r, const struct eellm_token_file *f) {
  struct eellm_loader l = {f->tokens, (size_t)f->count, r->train->seed,
                           r->micro_batch, r->seq_len};
  return l;
}

/* Submits the whole iteration (micro-batches, optimizer) and waits once. */
static int train_step(struct run *r, unsigned step, double lr) {
  char err[512];
  for (unsigned k = 0; k < r->n_exits; k++)
    r->weights[k] =
        k < r->spec->n_exits ? eellm_exit_spec_weight_at(r->spec->exits[k], step) : 1.0f;
  struct eellm_loader l = loader_of(r, r->data);
  eellm_trace_set_step((int)step);
  eellm_model_submit_zero_grads(r->model);
  for (unsigned mi = 0; mi < r->n_micro; mi++) {
    int32_t *tokens = r->tokens + mi * micro_rows(r), *targets = r->targets + mi * micro_rows(r);
    eellm_loader_train(&l, step, mi, tokens, targets);
    struct eellm_batch b = {tokens, targets, NULL};
    if (eellm_model_submit_forward_backward(r->model, &b, r->weights, 1.0f / r->n_micro, err,
                                            sizeof err) != 0)
      return fail(2, "%s: %s", r->o->data_path, err);
  }
  eellm_model_submit_optimizer(
      r->model, r->train->optimizer ? r->train->optimizer : &(Eellm__AdamW)EELLM__ADAM_W__INIT,
      step, lr);
  eellm_trace_set_step(-1);
  eellm_model_wait(r->model);
  return 0;
}

/* Mean loss of every exit over eval_batches validation batches (forward only). */
static int validate(struct run *r, double *losses) {
  char err[512];
  struct eellm_loader l = loader_of(r, r->val);
  unsigned count = r->train->eval_batches ? r->train->eval_batches : 1;
  for (unsigned i = 0; i < count; i++) {
    int32_t *tokens = r->tokens + i * micro_rows(r), *targets = r->targets + i * micro_rows(r);
    eellm_loader_eval(&l, i, count, tokens, targets);
    struct eellm_batch b = {tokens, targets, NULL};
    if (eellm_model_submit_forward(r->model, &b, err, sizeof err) != 0)
      return fail(2, "%s: %s", r->o->val_path, err);
  }
  eellm_model_wait(r->model);
  for (unsigned k = 0; k < r->n_exits; k++) losses[k] = eellm_model_exit_loss(r->model, k);
  return 0;
}

/* ---- reporting ------------------------------------------------------------ */

/* A JSON number in printf format fmt, or null for NaN and infinities (not JSON). */
static void json_number(FILE *out, const char *fmt, double x) {
  if (isfinite(x))
    fprintf(out, fmt, x);
  else
    fputs("null", out);
}

static void json_losses(FILE *out, const char *key, const double *losses, unsigned n) {
  fprintf(out, ", \"%s\": [", key);
  for (unsigned k = 0; k < n; k++) {
    if (k) fputs(", ", out);
    json_number(out, "%.6f", losses[k]);
  }
  fputc(']', out);
}

static void log_metrics(struct run *r, unsigned step, double lr, const double *train,
                        const double *val, double grad_norm, double tokens_per_s, double elapsed,
                        int skipped) {
  FILE *out = r->metrics_out;
  fprintf(out, "{\"step\": %u, \"lr\": ", step);
  json_number(out, "%.6g", lr);
  fputs(", \"grad_norm\": ", out);
  json_number(out, "%.6g", grad_norm);
  fputs(", \"tokens_per_s\": ", out);
  json_number(out, "%.1f", tokens_per_s);
  fputs(", \"elapsed_s\": ", out);
  json_number(out, "%.3f", elapsed);
  json_losses(out, "loss", train, r->n_exits);
  fprintf(out, ", \"exit_weights\": [");
  for (unsigned k = 0; k < r->n_exits; k++) {
    if (k) fputs(", ", out);
    json_number(out, "%.4f", r->weights[k]);
  }
  fputc(']', out);
  if (val) json_losses(out, "val_loss", val, r->n_exits);
  if (skipped) fputs(", \"skipped\": true", out);
  if (r->skipped_steps) fprintf(out, ", \"skipped_steps\": %u", r->skipped_steps);
  fputs("}\n", out);
  fflush(out);
}

/* Each exit's layer, for events. */
static unsigned *exit_layers(const struct run *r) {
  unsigned *layers = malloc(r->n_exits * sizeof *layers);
  for (unsigned k = 0; layers && k < r->n_exits; k++)
    layers[k] = eellm_model_exit_layer(r->model, k);
  return layers;
}

static void progress(const struct run *r, unsigned step, double lr, const double *losses,
                     double grad_norm, double tokens_per_s, double eta_s, int skipped) {
  unsigned *layers = exit_layers(r);
  struct eellm_train_event e = {.kind = EELLM_TRAIN_STEP, .step = step, .steps = r->steps,
                                .n_exits = r->n_exits, .exit_layers = layers, .losses = losses,
                                .lr = lr, .grad_norm = grad_norm, .tokens_per_s = tokens_per_s,
                                .eta_s = eta_s, .skipped = skipped,
                                .skipped_steps = r->skipped_steps};
  if (layers) report(r, &e);
  free(layers);
}

static void print_validation(const struct run *r, unsigned step, const double *val) {
  unsigned *layers = exit_layers(r);
  struct eellm_train_event e = {.kind = EELLM_TRAIN_VALIDATION, .step = step, .steps = r->steps,
                                .n_exits = r->n_exits, .exit_layers = layers, .losses = val};
  if (layers) report(r, &e);
  free(layers);
}

/* Entropy of the token frequencies, the loss of a model that ignores context. */
static double unigram_entropy(const struct eellm_token_file *f) {
  size_t n = (size_t)f->count, vocab = f->info.vocab_size;
  const uint16_t *t = f->tokens;
  size_t *counts = calloc(vocab ? vocab : 1, sizeof *counts);
  if (!counts) return NAN;
  for (size_t i = 0; i < n; i++) counts[t[i]]++;
  double h = 0;
  for (size_t v = 0; v < vocab; v++)
    if (counts[v]) h -= (double)counts[v] / n * log((double)counts[v] / n);
  free(counts);
  return h;
}

/* ---- the run -------------------------------------------------------------- */

/* A resumed run drops the metrics of steps after its checkpoint: they are redone.
 * *skipped counts the kept lines of skipped steps. */
static int truncate_metrics(const char *path, unsigned last_step, unsigned *skipped) {
  FILE *in = fopen(path, "r");
  if (!in) return 0;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  if (!out) {
    fclose(in);
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, in) > 0) {
    unsigned step;
    if (sscanf(line, "{\"step\": %u", &step) == 1 && step <= last_step) {
      fputs(line, out);
      if (strstr(line, ", \"skipped\": true")) ++*skipped;
    }
  }
  free(line);
  fclose(in);
  int ok = fflush(out) == 0 && fsync(fileno(out)) == 0;
  ok = fclose(out) == 0 && ok;
  return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* The START event, from rank 0; every rank calls it (the layout is collective). */
static void describe(const struct run *r, unsigned start_step) {
  char layout[16384] = "";
  if (eellm_nranks() > 1) eellm_model_describe_layout(r->model, layout, sizeof layout);
  if (eellm_rank() != 0) return;
  struct eellm_train_event e = {
      .kind = EELLM_TRAIN_START,
      .step = start_step,
      .steps = r->steps,
      .model_name = r->spec->name && *r->spec->name ? r->spec->name : "model",
      .n_params = eellm_model_n_params(r->model),
      .global_batch = r->train->global_batch,
      .seq_len = r->seq_len,
      .micro_batches = r->n_micro,
      .slices = eellm_model_slices(r->model),
      .data_path = r->o->data_path,
      .data_tokens = (size_t)r->data->count,
      .unigram_entropy = unigram_entropy(r->data),
      .tune_exits = r->o->tune_exits,
      .checkpoint = r->ckpt,
      .n_exits = r->n_exits,
      .layout = layout[0] ? layout : NULL};
  report(r, &e);
}

static int save(struct run *r, const struct eellm_train_state *state) {
  char err[8192]; /* room for paths of up to 4 KiB */
  if (eellm_model_save_checkpoint(r->model, r->ckpt, state, err, sizeof err) != 0) {
    if (strstr(err, "non-finite")) /* the weights overflowed: say when */
      return fail(1, "step %u: %s", state->step, err);
    return fail(1, "%s", err);
  }
  r->saved_step = state->step;
  return 0;
}

/* A value for messages: "NaN", "inf", "-inf", else %g. */
static const char *value_text(double x, char buf[32]) {
  if (isnan(x)) return "NaN";
  snprintf(buf, 32, "%g", x);
  return buf;
}

/* What a stop leaves: the checkpoint on disk, if any. */
static void kept(const struct run *r, char *buf, size_t n) {
  if (r->saved_step)
    snprintf(buf, n, "the last good checkpoint (step %u) is kept: %s", r->saved_step, r->ckpt);
  else
    snprintf(buf, n, "no checkpoint written");
}

/* The name of exit k in messages: "exit 0 (layer 1)", "the final head (layer 3)". */
static void exit_name(const struct run *r, unsigned k, char *buf, size_t n) {
  unsigned layer = eellm_model_exit_layer(r->model, k);
  if (k + 1 == r->n_exits)
    snprintf(buf, n, "the final head (layer %u)", layer);
  else
    snprintf(buf, n, "exit %u (layer %u)", k, layer);
}

/* After step `step`: 0 to go on (*skipped set when skip_nonfinite skipped its
 * update), or status 1 (every rank) with the reason from rank 0. Every rank
 * decides alike: the losses are every rank's, the norm is shared. */
static int check_step(struct run *r, unsigned step, const double *train, double grad_norm,
                      int *skipped) {
  int bad_exit = -1;
  for (unsigned k = 0; k < r->n_exits && bad_exit < 0; k++)
    if (!isfinite(train[k])) bad_exit = (int)k;
  int bad_norm = eellm_mpi_max(eellm_rank() == 0 && !isfinite(grad_norm));
  *skipped = bad_norm && r->o->skip_nonfinite;
  if (*skipped || (bad_exit < 0 && !bad_norm)) return 0;
  if (eellm_rank() != 0) return 1;
  char what[128], left[4300], value[32];
  kept(r, left, sizeof left);
  if (bad_exit >= 0) {
    exit_name(r, (unsigned)bad_exit, what, sizeof what);
    return fail(1, "step %u: %s has loss %s; stopped: %s%s", step, what,
                value_text(train[bad_exit], value), left,
                bad_norm ? "; --skip-nonfinite skips such steps"
                         : " (its gradient was finite and applied: not a step to skip)");
  }
  return fail(1, "step %u: the gradient norm is %s (the losses are finite); stopped: %s; "
                 "--skip-nonfinite skips such steps",
              step, value_text(grad_norm, value), left);
}

static int loop(struct run *r, struct eellm_train_state *state) {
  double *train = calloc(r->n_exits, sizeof *train), *val = calloc(r->n_exits, sizeof *val);
  if (!train || !val) return fail(1, "out of memory");
  int status = 0;
  double started = now_s(), tokens_per_step = (double)r->train->global_batch * r->seq_len;
  unsigned first = state->step + 1;
  r->saved_step = state->step; /* a resumed run's checkpoint; 0 for a new run */
  for (unsigned step = first; step <= r->steps && !status; step++) {
    double t0 = now_s(), lr = eellm_train_spec_lr_at(r->train, step);
    if (!isfinite(lr)) {
      char left[4300], value[32];
      kept(r, left, sizeof left);
      status = eellm_rank() ? 1 : fail(1, "step %u: the learning rate is %s; stopped before the "
                                          "step: %s", step, value_text(lr, value), left);
      break;
    }
    if ((status = train_step(r, step, lr))) break;
    double dt = now_s() - t0;
    for (unsigned k = 0; k < r->n_exits; k++) train[k] = eellm_model_exit_loss(r->model, k);
    /* Every rank sees the summed losses; the norm is the root rank's. */
    double grad_norm = eellm_rank() == 0 ? eellm_model_grad_norm(r->model) : 0;
    int skipped = 0;
    if ((status = check_step(r, step, train, grad_norm, &skipped))) break;
    r->skipped_steps += skipped;
    int eval = r->val && ((r->train->eval_interval && step % r->train->eval_interval == 0) ||
                          step == r->steps);
    if (eval && (status = validate(r, val))) break;
    double elapsed = now_s() - started;
    double eta = elapsed / (step - first + 1) * (r->steps - step);
    if (eellm_rank() == 0) {
      log_metrics(r, step, lr, train, eval ? val : NULL, grad_norm, tokens_per_step / dt, elapsed,
                  skipped);
      progress(r, step, lr, train, grad_norm, tokens_per_step / dt, eta, skipped);
      if (eval) print_validation(r, step, val);
    }
    state->step = step;
    int stop = eellm_mpi_max(interrupted); /* every rank stops after the same step */
    int due = (r->train->checkpoint_interval && step % r->train->checkpoint_interval == 0) ||
              step == r->steps || stop;
    if (due && (status = save(r, state))) break;
    if (stop) {
      struct eellm_train_event e = {.kind = EELLM_TRAIN_INTERRUPTED, .step = step,
                                    .steps = r->steps, .checkpoint = r->ckpt};
      if (eellm_rank() == 0) report(r, &e);
      break;
    }
  }
  /* A run resumed after its last step has nothing to train: it reports where it stands. */
  if (first > r->steps && r->val && status == 0 && (status = validate(r, val)) == 0 &&
      eellm_rank() == 0)
    print_validation(r, r->steps, val);
  free(train);
  free(val);
  return status;
}

/* The loop, with every task recorded into --trace if given (also when Ctrl-C
 * ends the run). Ranks start recording together, after a barrier: each one's
 * times count from there. Each rank writes its own file. */
static int loop_traced(struct run *r, struct eellm_train_state *state) {
  const struct eellm_train_options *o = r->o;
  if (!o->trace_path) return loop(r, state);
  char err[8192];
  eellm_mpi_max(0); /* the barrier */
  int failed = eellm_trace_start(o->trace_path, o->trace_format, eellm_rank(), eellm_nranks(),
                                 err, sizeof err) != 0;
  if (eellm_mpi_max(failed)) return failed ? fail(2, "--trace %s", err) : 2;
  int status = loop(r, state);
  long traced = eellm_trace_stop(err, sizeof err);
  if (traced < 0) return fail(1, "--trace %s", err);
  char file[4200];
  eellm_trace_rank_path(o->trace_path, eellm_rank(), eellm_nranks(), file, sizeof file);
  struct eellm_train_event e = {.kind = EELLM_TRAIN_TRACE, .steps = r->steps, .trace_file = file,
                                .trace_tasks = traced};
  report(r, &e);
  return status;
}

static void cleanup(struct run *r) {
  if (r->metrics_out) fclose(r->metrics_out);
  eellm_model_destroy(r->model);
  eellm_runtime_stop();
  if (r->data) eellm_tokens_close(r->data);
  if (r->val) eellm_tokens_close(r->val);
  eellm_train_spec_free(r->train);
  eellm_model_spec_free(r->spec);
  free(r->tokens);
  free(r->targets);
  free(r->weights);
}

/* Rank 0's files: metrics (truncated to the checkpoint when resuming) and the spec. */
static int open_outputs(struct run *r, const struct eellm_train_state *state) {
  const struct eellm_train_options *o = r->o;
  if (eellm_rank() != 0) return 0;
  if (o->resume && truncate_metrics(r->metrics, state->step, &r->skipped_steps) != 0)
    return fail(1, "%s: cannot rewrite (%s)", r->metrics, strerror(errno));
  if (!(r->metrics_out = fopen(r->metrics, o->resume ? "a" : "w")))
    return fail(2, "%s: cannot write (%s)", r->metrics, strerror(errno));
  char err[8192], spec_copy[4200];
  snprintf(spec_copy, sizeof spec_copy, "%s/model.txtpb", o->out_dir);
  if (eellm_spec_write_text(spec_copy, &r->spec->base, err, sizeof err) != 0)
    return fail(1, "%s", err);
  return 0;
}

int eellm_train_run(const struct eellm_train_options *o, char *err, size_t errlen) {
  struct run r = {.o = o};
  struct eellm_train_state state = {0};
  if (errlen) err[0] = '\0';
  if (eellm_launched_by_mpirun() && eellm_mpi_init(err, errlen) != 0) return 1;
  run_err = err;
  run_errlen = errlen;
  run_options = o;
  /* Ranks agree before and after each collective phase, so none waits alone. */
  int status = eellm_mpi_max(setup_inputs(&r));
  if (status == 0) status = eellm_mpi_max(setup_model(&r, &state));
  if (status == 0) status = eellm_mpi_max(open_outputs(&r, &state));
  if (status == 0) {
    interrupted = 0;
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* Past a file-size limit a write then fails with EFBIG, cleanly, instead of killing us. */
    signal(SIGXFSZ, SIG_IGN);
    describe(&r, state.step);
    status = loop_traced(&r, &state);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
  }
  cleanup(&r);
  run_err = NULL;
  run_errlen = 0;
  run_options = NULL;
  return status;
}
