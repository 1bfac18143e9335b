/* eellm train: train an early-exit model on a token file. */
#include <eellm/train.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "commands.h"

static const char train_usage[] =
    "usage: eellm train --model M.txtpb --train T.txtpb --data train.bin [--val val.bin]\n"
    "                   --out runs/NAME [--resume] [--init CKPT] [--tune-exits] [--steps N]\n"
    "                   [--skip-nonfinite] [--trace FILE.json [--trace-format chrome|paje]]\n"
    "\n"
    "Trains the model: each iteration submits every micro-batch's forward and backward\n"
    "(exit heads and losses included) and the optimizer as StarPU tasks, then waits once.\n"
    "\n"
    "  --model FILE   model spec (.txtpb or .pb); optional with --init or --resume,\n"
    "                 which carry the spec in the checkpoint\n"
    "  --train FILE   training spec: optimizer, schedules, batch, steps, intervals\n"
    "  --data FILE    training tokens (eellm tokenize)\n"
    "  --val FILE     validation tokens: every exit's loss at each eval interval\n"
    "  --out DIR      run directory: checkpoint.safetensors, metrics.jsonl, model.txtpb\n"
    "  --resume       continue the run in DIR from its checkpoint (same losses, bit for bit,\n"
    "                 as a run that was not interrupted)\n"
    "  --init CKPT    start from these weights instead of a random initialisation\n"
    "                 (for example the output of 'eellm convert add-exits')\n"
    "  --tune-exits   freeze the backbone and train only the exits (EE-Tuning)\n"
    "  --steps N      stop after step N instead of the training spec's steps\n"
    "  --skip-nonfinite  a step whose gradient norm is NaN or inf applies no update and\n"
    "                 the run goes on (counted in the progress and metrics.jsonl);\n"
    "                 without it such a step stops the run, the last checkpoint kept\n"
    "  --trace FILE   record every task (kind, micro-batch, layer, worker, times) into\n"
    "                 FILE, written at the end or on Ctrl-C; see 'eellm trace'\n"
    "  --trace-format chrome (default: Chrome Trace Event JSON, for Perfetto and\n"
    "                 'eellm trace') or paje (ViTE, pajeng)\n"
    "\n"
    "Ctrl-C writes a checkpoint and exits; --resume continues. A NaN or inf loss, gradient\n"
    "norm or learning rate stops the run (status 1) naming the step and the value; a\n"
    "checkpoint is never replaced by non-finite weights. Exit status: 0 done or\n"
    "interrupted cleanly, 1 runtime failure, 2 bad input (one line on stderr).\n";

/* How the run's events are printed. */
struct printer {
  int tty;             /* stdout is a terminal: the progress line is redrawn in place */
  int failure_printed; /* the run's error was reported as it happened */
};

static void format_duration(double s, char *buf, size_t n) {
  if (s >= 3600)
    snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  else
    snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
}

static void print_start(const struct eellm_train_event *e) {
  printf("eellm train: %s, %zu parameters, %u exits; %u steps of %u sequences x %u tokens "
         "(%u micro-batches, %u slice%s each)\n",
         e->model_name, e->n_params, e->n_exits - 1, e->steps, e->global_batch, e->seq_len,
         e->micro_batches, e->slices, e->slices == 1 ? "" : "s");
  printf("data %s: %zu tokens, unigram entropy %.4f nats/token%s\n", e->data_path,
         e->data_tokens, e->unigram_entropy,
         e->tune_exits ? "; backbone frozen (EE-Tuning)" : "");
  if (e->layout) fputs(e->layout, stdout);
  if (e->step >= e->steps)
    printf("%s has finished its %u steps\n", e->checkpoint, e->steps);
  else if (e->step)
    printf("resuming %s at step %u\n", e->checkpoint, e->step + 1);
}

/* One progress line: redrawn in place on a terminal, plain lines otherwise
 * (about 50 over the run). */
static void print_step(const struct printer *p, const struct eellm_train_event *e) {
  int last = e->step == e->steps;
  if (!p->tty && !last && !e->skipped && e->step % (e->steps / 50 ? e->steps / 50 : 1) != 0)
    return;
  char eta[32];
  format_duration(e->eta_s, eta, sizeof eta);
  printf("%sstep %u/%u | %.0f tok/s | loss", p->tty ? "\r\033[K" : "", e->step, e->steps,
         e->tokens_per_s);
  for (unsigned k = 0; k < e->n_exits; k++)
    printf(" %s%u:%.3f", k + 1 == e->n_exits ? "final L" : "L", e->exit_layers[k], e->losses[k]);
  printf(" | lr %.2e | ETA %s", e->lr, eta);
  if (e->skipped_steps) printf(" | skipped %u", e->skipped_steps);
  if (e->skipped) printf(" (step %u: non-finite gradient norm, no update)", e->step);
  if (!p->tty || last || e->skipped) putchar('\n');
}

static void print_validation(const struct printer *p, const struct eellm_train_event *e) {
  printf("%svalidation at step %u (nats/token):", p->tty ? "\r\033[K" : "", e->step);
  for (unsigned k = 0; k < e->n_exits; k++)
    printf("%s %s %u %.4f", k ? " |" : "", k + 1 == e->n_exits ? "final, layer" : "exit, layer",
           e->exit_layers[k], e->losses[k]);
  putchar('\n');
}

static void on_event(void *ctx, const struct eellm_train_event *e) {
  struct printer *p = ctx;
  switch (e->kind) {
    case EELLM_TRAIN_START: print_start(e); break;
    case EELLM_TRAIN_STEP: print_step(p, e); break;
    case EELLM_TRAIN_VALIDATION: print_validation(p, e); break;
    case EELLM_TRAIN_INTERRUPTED:
      printf("%sinterrupted after step %u: checkpoint %s written; --resume continues\n",
             p->tty ? "\n" : "", e->step, e->checkpoint);
      break;
    case EELLM_TRAIN_TRACE: printf("trace: %ld tasks in %s\n", e->trace_tasks, e->trace_file); break;
    case EELLM_TRAIN_FAILED:
      fflush(stdout);
      fprintf(stderr, "eellm train: %s\n", e->message);
      p->failure_printed = 1;
      break;
  }
  fflush(stdout);
}

int cmd_train(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'}, {"train", required_argument, 0, 't'},
      {"data", required_argument, 0, 'd'},  {"val", required_argument, 0, 'v'},
      {"out", required_argument, 0, 'o'},   {"init", required_argument, 0, 'i'},
      {"steps", required_argument, 0, 's'}, {"resume", no_argument, 0, 'r'},
      {"tune-exits", no_argument, 0, 'e'},  {"help", no_argument, 0, 'h'},
      {"trace", required_argument, 0, 'T'}, {"trace-format", required_argument, 0, 'F'},
      {"skip-nonfinite", no_argument, 0, 'N'}, {0, 0, 0, 0}};
  struct eellm_train_options o = {0};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    char *end;
    switch (opt) {
      case 'm': o.model_path = optarg; break;
      case 't': o.train_path = optarg; break;
      case 'd': o.data_path = optarg; break;
      case 'v': o.val_path = optarg; break;
      case 'o': o.out_dir = optarg; break;
      case 'i': o.init_path = optarg; break;
      case 'r': o.resume = 1; break;
      case 'e': o.tune_exits = 1; break;
      case 'N': o.skip_nonfinite = 1; break;
      case 'T': o.trace_path = optarg; break;
      case 'F':
        if (eellm_trace_format_parse(optarg, &o.trace_format) != 0) {
          fprintf(stderr, "eellm train: --trace-format wants chrome or paje, got '%s'\n", optarg);
          return 2;
        }
        break;
      case 's': {
        unsigned long steps = strtoul(optarg, &end, 10);
        if (*end || steps < 1 || steps > 1000000000ul) {
          fprintf(stderr, "eellm train: --steps wants a positive integer, got '%s'\n", optarg);
          return 2;
        }
        o.steps = (unsigned)steps;
        break;
      }
      case 'h': fputs(train_usage, stdout); return 0;
      default: fputs(train_usage, stderr); return 2;
    }
  }
  const char *missing = !o.train_path ? "--train" : !o.data_path ? "--data" : !o.out_dir ? "--out" : NULL;
  if (optind != argc || missing) {
    if (missing) fprintf(stderr, "eellm train: %s is required\n", missing);
    fputs(train_usage, stderr);
    return 2;
  }
  if (o.resume && o.init_path) {
    fprintf(stderr, "eellm train: --resume continues a run; --init starts a new one: pick one\n");
    return 2;
  }
  /* mpirun relays lines, not redraws. */
  struct printer p = {.tty = isatty(STDOUT_FILENO) && !eellm_launched_by_mpirun()};
  o.on_event = on_event;
  o.ctx = &p;
  char err[8400];
  int status = eellm_train_run(&o, err, sizeof err);
  if (status != 0 && err[0] && !p.failure_printed) fprintf(stderr, "eellm train: %s\n", err);
  return status;
}
