/* eellm tokenize: text files -> token files (training and validation split).
 * eellm detokenize: a token file -> text. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "commands.h"
#include <eellm/outfile.h>
#include <eellm/tokenizer.h>
#include <eellm/tokens.h>

static const char tokenize_usage[] =
    "usage: eellm tokenize --tokenizer byte|gpt2 [--tokenizer-dir DIR] INPUT... -o OUT.bin\n"
    "                      [--val-out VAL.bin [--val-fraction F]]\n"
    "\n"
    "Tokenizes text into a token file for training. Each INPUT is a text file or a\n"
    "directory, read recursively with the files in name order (names starting with '.'\n"
    "are skipped); INPUTs keep the order given. Every non-empty file is one document,\n"
    "and documents are separated by the end-of-text token.\n"
    "\n"
    "  --tokenizer KIND     byte (ids are bytes, vocabulary 257) or gpt2 (GPT-2's BPE,\n"
    "                       vocabulary 50257)\n"
    "  --tokenizer-dir DIR  where gpt2's encoder.json and vocab.bpe are (default\n"
    "                       $EELLM_TOKENIZER_DIR, else data/gpt2; scripts/fetch-tokenizer\n"
    "                       fetches them)\n"
    "  -o, --out FILE       the token file\n"
    "  --val-out FILE       also write a validation token file with the last documents,\n"
    "                       about --val-fraction of them (at least one, never all)\n"
    "  --val-fraction F     share of the documents for validation, in (0, 1); default 0.05\n"
    "\n"
    "Outputs are written atomically: after any error they keep their old content.\n"
    "Exit status: 0 done, 2 bad usage, bad input or unwritable output (one line on stderr).\n";

static const char detokenize_usage[] =
    "usage: eellm detokenize FILE.bin [-o OUT.txt] [--tokenizer-dir DIR]\n"
    "\n"
    "Writes the text of a token file, decoded with the tokenizer its header names, to\n"
    "standard output or (atomically) to OUT.txt. The end-of-text token between documents\n"
    "is written as the literal \"<|endoftext|>\", for both tokenizers.\n"
    "\n"
    "  -o, --out FILE       write the text here instead of standard output\n"
    "  --tokenizer-dir DIR  where gpt2's encoder.json and vocab.bpe are (default\n"
    "                       $EELLM_TOKENIZER_DIR, else data/gpt2)\n"
    "\n"
    "Exit status: 0 done, 2 bad usage, bad input or unwritable output (one line on stderr).\n";

#define MAX_DEPTH 32 /* of directories: deeper is most likely a symbolic link loop */

/* The documents: one path per non-empty file, in order. */
struct documents {
  char **paths;
  size_t n, cap;
};

static void documents_free(struct documents *docs) {
  for (size_t i = 0; i < docs->n; i++) free(docs->paths[i]);
  free(docs->paths);
}

static int documents_add(struct documents *docs, const char *path) {
  if (docs->n == docs->cap) {
    size_t cap = docs->cap ? 2 * docs->cap : 64;
    char **paths = realloc(docs->paths, cap * sizeof *paths);
    if (!paths) return -1;
    docs->paths = paths;
    docs->cap = cap;
  }
  if (!(docs->paths[docs->n] = strdup(path))) return -1;
  docs->n++;
  return 0;
}

static int visible(const struct dirent *entry) { return entry->d_name[0] != '.'; }

static int by_name(const struct dirent **a, const struct dirent **b) {
  return strcmp((*a)->d_name, (*b)->d_name);
}

/* Adds the file at path, or the files under it in name order. 0, or -1 after a message. */
static int collect(struct documents *docs, const char *path, int depth) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "eellm tokenize: %s: %s\n", path, strerror(errno));
    return -1;
  }
  if (S_ISREG(st.st_mode)) {
    if (st.st_size > 0 && documents_add(docs, path) != 0) {
      fprintf(stderr, "eellm tokenize: out of memory\n");
      return -1;
    }
    return 0;
  }
  if (!S_ISDIR(st.st_mode)) {
    fprintf(stderr, "eellm tokenize: %s: neither a file nor a directory\n", path);
    return -1;
  }
  if (depth >= MAX_DEPTH) {
    fprintf(stderr, "eellm tokenize: %s: directories nested over %d deep (a link loop?)\n", path,
            MAX_DEPTH);
    return -1;
  }
  struct dirent **entries;
  int n = scandir(path, &entries, visible, by_name);
  if (n < 0) {
    fprintf(stderr, "eellm tokenize: %s: %s\n", path, strerror(errno));
    return -1;
  }
  int rc = 0;
  for (int i = 0; i < n; i++) {
    size_t len = strlen(path) + strlen(entries[i]->d_name) + 2;
    char *child = malloc(len);
    if (!child) {
      fprintf(stderr, "eellm tokenize: out of memory\n");
      rc = -1;
    } else if (rc == 0) {
      snprintf(child, len, "%s/%s", path, entries[i]->d_name);
      rc = collect(docs, child, depth + 1);
    }
    free(child);
    free(entries[i]);
  }
  free(entries);
  return rc;
}

/* Reads a whole file into *data (malloc'd). 0, or -1 after a message. */
static int read_document(const char *path, char **data, size_t *len) {
  FILE *fp = fopen(path, "rb");
  struct stat st;
  *data = NULL;
  if (fp && fstat(fileno(fp), &st) == 0 && (*data = malloc((size_t)st.st_size + 1))) {
    *len = fread(*data, 1, (size_t)st.st_size, fp);
    int failed = ferror(fp);
    fclose(fp);
    if (!failed) return 0;
  } else if (fp) {
    fclose(fp);
  }
  fprintf(stderr, "eellm tokenize: %s: cannot read: %s\n", path, strerror(errno));
  free(*data);
  return -1;
}

/* One output of tokenize and what went into it. */
struct split {
  const char *name, *path;
  struct eellm_tokens_writer *writer;
  size_t first, end; /* documents [first, end) */
  uint64_t bytes, tokens;
};

/* Tokenizes the split's documents into its writer. 0, or -1 after a message. */
static int tokenize_split(struct eellm_tokenizer *tok, const struct documents *docs,
                          struct split *split, struct eellm_ids *ids) {
  char err[512];
  for (size_t d = split->first; d < split->end; d++) {
    char *text;
    size_t len;
    if (read_document(docs->paths[d], &text, &len) != 0) return -1;
    ids->n = 0;
    int rc = d > split->first ? eellm_ids_push(ids, eellm_tokenizer_eot_id(tok)) : 0;
    if (rc == 0) rc = eellm_tokenizer_encode(tok, text, len, ids);
    free(text);
    if (rc != 0) {
      fprintf(stderr, "eellm tokenize: %s: cannot encode (out of memory)\n", docs->paths[d]);
      return -1;
    }
    if (eellm_tokens_append(split->writer, ids->v, ids->n, err, sizeof err) != 0) {
      fprintf(stderr, "eellm tokenize: %s\n", err);
      return -1;
    }
    split->bytes += len;
  }
  return 0;
}

static void print_split(const struct split *s) {
  printf("%-5s %s: %zu documents, %.2f MB, %" PRIu64 " tokens, %.2f bytes/token\n", s->name,
         s->path, s->end - s->first, s->bytes / 1e6, s->tokens,
         s->tokens ? (double)s->bytes / (double)s->tokens : 0.0);
}

/* Number of validation documents: about fraction of n, at least 1, at most n - 1. */
static size_t validation_count(size_t n, double fraction) {
  size_t count = (size_t)llround(fraction * (double)n);
  if (count < 1) count = 1;
  return count > n - 1 ? n - 1 : count;
}

struct tokenize_args {
  const char *kind, *dir, *out, *val_out;
  double val_fraction;
  int val_fraction_given;
};

static int parse_tokenize_args(int argc, char **argv, struct tokenize_args *a) {
  static const struct option options[] = {{"tokenizer", required_argument, 0, 't'},
                                          {"tokenizer-dir", required_argument, 0, 'd'},
                                          {"out", required_argument, 0, 'o'},
                                          {"val-out", required_argument, 0, 'v'},
                                          {"val-fraction", required_argument, 0, 'f'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  *a = (struct tokenize_args){.val_fraction = 0.05};
  int opt;
  while ((opt = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
    char *end;
    switch (opt) {
      case 't': a->kind = optarg; break;
      case 'd': a->dir = optarg; break;
      case 'o': a->out = optarg; break;
      case 'v': a->val_out = optarg; break;
      case 'f':
        a->val_fraction = strtod(optarg, &end);
        a->val_fraction_given = 1;
        if (*end || end == optarg || !(a->val_fraction > 0 && a->val_fraction < 1)) {
          fprintf(stderr, "eellm tokenize: --val-fraction wants a number in (0, 1), got '%s'\n",
                  optarg);
          return 2;
        }
        break;
      case 'h': fputs(tokenize_usage, stdout); return 0;
      default: fputs(tokenize_usage, stderr); return 2;
    }
  }
  const char *missing = !a->kind         ? "--tokenizer"
                        : !a->out        ? "-o"
                        : optind == argc ? "an INPUT"
                                         : NULL;
  if (missing) {
    fprintf(stderr, "eellm tokenize: needs %s (see 'eellm tokenize --help')\n", missing);
    return 2;
  }
  if (a->val_fraction_given && !a->val_out) {
    fprintf(stderr, "eellm tokenize: --val-fraction needs --val-out\n");
    return 2;
  }
  if (a->val_out && strcmp(a->val_out, a->out) == 0) {
    fprintf(stderr, "eellm tokenize: --val-out and -o are the same file '%s'\n", a->out);
    return 2;
  }
  return -1;
}

/* Splits the documents and opens a writer for each split. 0, or 2 after a message. */
static int open_splits(const struct tokenize_args *a, const struct documents *docs,
                       const struct eellm_tokenizer *tok, struct split splits[2], int *n_splits) {
  size_t n_val = 0;
  if (a->val_out) {
    if (docs->n < 2) {
      fprintf(stderr, "eellm tokenize: --val-out needs at least 2 documents; the inputs have %zu\n",
              docs->n);
      return 2;
    }
    n_val = validation_count(docs->n, a->val_fraction);
  }
  splits[0] = (struct split){"train", a->out, NULL, 0, docs->n - n_val, 0, 0};
  splits[1] = (struct split){"val", a->val_out, NULL, docs->n - n_val, docs->n, 0, 0};
  *n_splits = a->val_out ? 2 : 1;
  struct eellm_tokens_info info = {eellm_tokenizer_id(tok), eellm_tokenizer_vocab_size(tok),
                                   eellm_tokenizer_eot_id(tok)};
  char err[512];
  for (int s = 0; s < *n_splits; s++)
    if (!(splits[s].writer = eellm_tokens_create(splits[s].path, &info, err, sizeof err))) {
      fprintf(stderr, "eellm tokenize: %s\n", err);
      return 2;
    }
  return 0;
}

int cmd_tokenize(int argc, char **argv) {
  struct tokenize_args a;
  int status = parse_tokenize_args(argc, argv, &a);
  if (status >= 0) return status;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  struct documents docs = {0};
  for (int i = optind; i < argc; i++)
    if (collect(&docs, argv[i], 0) != 0) {
      documents_free(&docs);
      return 2;
    }
  char err[512];
  struct eellm_tokenizer *tok = NULL;
  struct split splits[2] = {{0}};
  int n_splits = 0;
  status = 2;
  if (docs.n == 0) {
    fprintf(stderr, "eellm tokenize: no text in the inputs (every file is empty)\n");
    goto done;
  }
  if (!(tok = eellm_tokenizer_open(a.kind, a.dir, err, sizeof err))) {
    fprintf(stderr, "eellm tokenize: %s\n", err);
    goto done;
  }
  if (open_splits(&a, &docs, tok, splits, &n_splits) != 0) goto done;
  struct eellm_ids ids = {0};
  int failed = 0;
  for (int s = 0; s < n_splits && !failed; s++)
    failed = tokenize_split(tok, &docs, &splits[s], &ids);
  free(ids.v);
  if (failed) goto done;
  for (int s = 0; s < n_splits; s++) {
    struct eellm_tokens_writer *w = splits[s].writer;
    splits[s].writer = NULL;
    splits[s].tokens = eellm_tokens_written(w);
    if (eellm_tokens_commit(w, err, sizeof err) != 0) {
      fprintf(stderr, "eellm tokenize: %s\n", err);
      goto done;
    }
  }
  for (int s = 0; s < n_splits; s++) print_split(&splits[s]);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  double mb = (splits[0].bytes + splits[1].bytes) / 1e6;
  printf("%s tokenizer: %.2f MB in %.2f s (%.1f MB/s)\n", a.kind, mb, seconds,
         seconds > 0 ? mb / seconds : 0.0);
  status = 0;
done:
  for (int s = 0; s < n_splits; s++) eellm_tokens_abort(splits[s].writer);
  eellm_tokenizer_close(tok);
  documents_free(&docs);
  return status;
}

/* ---- detokenize ----------------------------------------------------------- */

/* Opens the tokenizer a token file names and checks that it matches the header. */
static struct eellm_tokenizer *open_tokenizer_of(const char *path,
                                                 const struct eellm_tokens_info *info,
                                                 const char *dir) {
  char err[512];
  struct eellm_tokenizer *tok =
      eellm_tokenizer_open(eellm_tokenizer_name(info->tokenizer), dir, err, sizeof err);
  if (!tok) {
    fprintf(stderr, "eellm detokenize: %s\n", err);
    return NULL;
  }
  if (eellm_tokenizer_vocab_size(tok) != info->vocab_size ||
      eellm_tokenizer_eot_id(tok) != info->eot_id) {
    fprintf(stderr,
            "eellm detokenize: %s: written with a %s tokenizer of vocabulary %" PRIu32
            " and end-of-text %" PRIu32 "; this one has %" PRIu32 " and %u\n",
            path, eellm_tokenizer_name(info->tokenizer), info->vocab_size, info->eot_id,
            eellm_tokenizer_vocab_size(tok), eellm_tokenizer_eot_id(tok));
    eellm_tokenizer_close(tok);
    return NULL;
  }
  return tok;
}

/* Decodes the tokens chunk by chunk into out. 0, or -1 on a write error. */
static int write_text(const struct eellm_tokenizer *tok, const struct eellm_token_file *file,
                      FILE *out) {
  enum { CHUNK = 1 << 16 };
  struct eellm_bytes text = {0};
  int rc = 0;
  for (uint64_t at = 0; at < file->count && rc == 0; at += CHUNK) {
    size_t n = file->count - at < CHUNK ? (size_t)(file->count - at) : CHUNK;
    text.n = 0;
    rc = eellm_tokenizer_decode(tok, file->tokens + at, n, &text);
    if (rc == 0 && text.n && fwrite(text.v, 1, text.n, out) != text.n) rc = -1;
  }
  free(text.v);
  return rc;
}

int cmd_detokenize(int argc, char **argv) {
  static const struct option options[] = {{"out", required_argument, 0, 'o'},
                                          {"tokenizer-dir", required_argument, 0, 'd'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  const char *out_path = NULL, *dir = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
    switch (opt) {
      case 'o': out_path = optarg; break;
      case 'd': dir = optarg; break;
      case 'h': fputs(detokenize_usage, stdout); return 0;
      default: fputs(detokenize_usage, stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fputs(detokenize_usage, stderr);
    return 2;
  }
  const char *path = argv[optind];
  char err[512];
  struct eellm_token_file *file = eellm_tokens_open(path, err, sizeof err);
  if (!file) {
    fprintf(stderr, "eellm detokenize: %s\n", err);
    return 2;
  }
  struct eellm_tokenizer *tok = open_tokenizer_of(path, &file->info, dir);
  struct eellm_outfile out = {0};
  int status = 2;
  if (!tok) goto done;
  if (out_path && eellm_outfile_open(&out, out_path, err, sizeof err) != 0) {
    fprintf(stderr, "eellm detokenize: %s\n", err);
    goto done;
  }
  if (write_text(tok, file, out_path ? out.fp : stdout) != 0) {
    fprintf(stderr, "eellm detokenize: %s: cannot write: %s\n", out_path ? out_path : "stdout",
            strerror(errno));
    if (out_path) eellm_outfile_abort(&out);
    goto done;
  }
  if (out_path && eellm_outfile_commit(&out, err, sizeof err) != 0) {
    fprintf(stderr, "eellm detokenize: %s\n", err);
    goto done;
  }
  status = !out_path && fflush(stdout) != 0 ? 2 : 0;
done:
  eellm_tokenizer_close(tok);
  eellm_tokens_close(file);
  return status;
}
