/* eellm train: train an early-exit model on a token file. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/commands.h"
#include "runtime/train/trainer.h"

static const char train_usage[] =
    "usage: eellm train --model M.txtpb --train T.txtpb --data train.bin [--val val.bin]\n"
    "                   --out runs/NAME [--resume] [--init CKPT] [--tune-exits] [--steps N]\n"
    "                   [--trace FILE.json [--trace-format chrome|paje]]\n"
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
    "  --trace FILE   record every task (kind, micro-batch, layer, worker, times) into\n"
    "                 FILE, written at the end or on Ctrl-C; see 'eellm trace'\n"
    "  --trace-format chrome (default: Chrome Trace Event JSON, for Perfetto and\n"
    "                 'eellm trace') or paje (ViTE, pajeng)\n"
    "\n"
    "Ctrl-C writes a checkpoint and exits; --resume continues. Exit status: 0 done or\n"
    "interrupted cleanly, 1 runtime failure, 2 bad input (one line on stderr).\n";

int cmd_train(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'}, {"train", required_argument, 0, 't'},
      {"data", required_argument, 0, 'd'},  {"val", required_argument, 0, 'v'},
      {"out", required_argument, 0, 'o'},   {"init", required_argument, 0, 'i'},
      {"steps", required_argument, 0, 's'}, {"resume", no_argument, 0, 'r'},
      {"tune-exits", no_argument, 0, 'e'},  {"help", no_argument, 0, 'h'},
      {"trace", required_argument, 0, 'T'}, {"trace-format", required_argument, 0, 'F'},
      {0, 0, 0, 0}};
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
  return eellm_train_run(&o);
}
