#include "runtime/trainer.h"

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
#include "runtime/dataloader.h"
#include "runtime/specio.h"
#include "runtime/tokens.h"

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
  int tty;
};

static int fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("eellm train: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return status;
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
  if (eellm_tokens_vocab(f) > spec->vocab_size) {
    snprintf(err, errlen, "%s: tokenizer vocabulary %u exceeds the model's vocab_size %u", path,
             eellm_tokens_vocab(f), spec->vocab_size);
  } else if (eellm_tokens_count(f) < (size_t)seq_len + 1) {
    snprintf(err, errlen, "%s: %zu tokens, shorter than one sequence of %u tokens plus its target",
             path, eellm_tokens_count(f), seq_len);
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
  eellm_spec_free(stored);
  return differs ? -1 : 0;
}

static int setup(struct run *r, struct eellm_train_state *state) {
  const struct eellm_train_options *o = r->o;
  char err[1024];
  snprintf(r->ckpt, sizeof r->ckpt, "%s/checkpoint.safetensors", o->out_dir);
  snprintf(r->metrics, sizeof r->metrics, "%s/metrics.jsonl", o->out_dir);
  if (!(r->spec = load_model_spec(r, err, sizeof err))) return fail(2, "%s", err);
  if (!(r->train = eellm_train_spec_load(o->train_path, r->spec, err, sizeof err)))
    return fail(2, "%s", err);
  const Eellm__Parallelism *par = r->train->parallelism;
  if (par && (par->pp > 1 || par->tp > 1 || par->dp > 1))
    return fail(2, "%s: pp, tp and dp above 1 need a multi-rank run, which this build of eellm "
                   "train does not do yet",
                o->train_path);
  r->seq_len = r->train->seq_len ? r->train->seq_len : r->spec->context_length;
  r->n_micro = r->train->micro_batches;
  r->micro_batch = r->train->global_batch / r->n_micro;
  r->steps = o->steps ? o->steps : r->train->steps;
  if (!(r->data = open_tokens(o->data_path, r->spec, r->seq_len, err, sizeof err)))
    return fail(2, "%s", err);
  if (o->val_path && !(r->val = open_tokens(o->val_path, r->spec, r->seq_len, err, sizeof err)))
    return fail(2, "%s", err);
  if (ensure_out_dir(o->out_dir) != 0)
    return fail(2, "%s: cannot create or write the output directory (%s)", o->out_dir,
                strerror(errno));
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

  if (eellm_runtime_start() != 0) return 1;
  if (!(r->model = eellm_model_create(r->spec, r->micro_batch, r->seq_len, err, sizeof err)))
    return fail(1, "%s", err);
  state->seed = r->train->seed;
  state->step = 0;
  if (o->resume) {
    if (eellm_checkpoint_load(r->model, r->ckpt, state, err, sizeof err) != 0)
      return fail(2, "%s", err);
  } else if (o->init_path) {
    if (eellm_model_load(r->model, o->init_path, err, sizeof err) != 0) return fail(2, "%s", err);
  } else {
    eellm_model_init(r->model, r->train->seed);
  }
  if (o->tune_exits) {
    if (r->spec->n_exits == 0) return fail(2, "--tune-exits: the model has no exits to tune");
    eellm_model_freeze_backbone(r->model);
  }
  r->n_exits = eellm_n_exits(r->model);
  unsigned buffers = r->n_micro > r->train->eval_batches ? r->n_micro : r->train->eval_batches;
  size_t rows = (size_t)buffers * r->micro_batch * r->seq_len;
  r->tokens = malloc(rows * sizeof *r->tokens);
  r->targets = malloc(rows * sizeof *r->targets);
  r->weights = malloc(r->n_exits * sizeof *r->weights);
  if (!r->tokens || !r->targets || !r->weights) return fail(1, "out of memory");
  r->tty = isatty(STDOUT_FILENO);
  return 0;
}
