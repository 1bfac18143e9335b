/* eellm: train and serve early-exit LLMs on StarPU. */
#include <eellm.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} commands[] = {
    {"model", cmd_model, "describe, validate and convert a model spec (.txtpb or .pb)"},
    {"train", cmd_train, "train an early-exit model on a token file (checkpoints, resume, EE-Tuning)"},
    {"generate", cmd_generate, "generate text with early exits and KV caches (recompute, pipeline, speculative)"},
    {"eval", cmd_eval, "validation loss per exit, threshold sweep and calibrated thresholds"},
    {"convert", cmd_convert, "add-exits: add early exits to a trained model's checkpoint"},
    {"plot", cmd_plot, "draw a run's loss per exit (metrics.jsonl) as an SVG"},
    {"trace", cmd_trace, "figures and an HTML Gantt report from task traces (train --trace)"},
    {"tokenize", cmd_tokenize, "tokenize text files into token files (byte or GPT-2 BPE)"},
    {"detokenize", cmd_detokenize, "write the text of a token file"},
    {"serve", cmd_serve, "serve early-exit generation over HTTP (EE-LLM's API)"},
    {"info", cmd_info, "the StarPU (workers, scheduler, CUDA, MPI), BLAS and GPUs eellm runs on"},
};

static void usage(FILE *out) {
  fprintf(out, "usage: eellm COMMAND [ARGS]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\n'eellm COMMAND --help' describes a command.\n");
}

int main(int argc, char **argv) {
  eellm_blas_fit_cpu(argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "eellm: unknown command '%s' (see 'eellm --help')\n", argv[1]);
  return 2;
}
