/* Runs a fuzz target's LLVMFuzzerTestOneInput once on each file given, or on
 * each file of each directory given (not recursively): the seed corpus and the
 * regression inputs, in builds without libFuzzer. Prints "NAME: N inputs" and
 * exits 0, or dies where an oracle fails (abort) or a sanitizer reports. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t run_file(const char *path) {
  size_t size;
  uint8_t *data = fuzz_slurp(path, &size);
  if (!data) {
    fprintf(stderr, "replay: cannot read %s\n", path);
    exit(1);
  }
  /* A copy of exactly size bytes, so that ASan sees reads past the end. */
  uint8_t *exact = malloc(size ? size : 1);
  memcpy(exact, data, size);
  free(data);
  fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
  LLVMFuzzerTestOneInput(exact, size);
  free(exact);
  return 1;
}

int main(int argc, char **argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  size_t n = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) continue; /* an absent regressions/ folder */
    if (!S_ISDIR(st.st_mode)) {
      n += run_file(argv[i]);
      continue;
    }
    DIR *d = opendir(argv[i]);
    if (!d) continue;
    char **names = NULL;
    size_t count = 0;
    for (struct dirent *e; (e = readdir(d));) {
      if (e->d_name[0] == '.') continue;
      names = realloc(names, (count + 1) * sizeof *names);
      size_t len = strlen(argv[i]) + strlen(e->d_name) + 2;
      names[count] = malloc(len);
      snprintf(names[count++], len, "%s/%s", argv[i], e->d_name);
    }
    closedir(d);
    qsort(names, count, sizeof *names, cmp);
    for (size_t k = 0; k < count; k++) {
      n += run_file(names[k]);
      free(names[k]);
    }
    free(names);
  }
  const char *name = strrchr(argv[0], '/');
  printf("%s: %zu inputs\n", name ? name + 1 : argv[0], n);
  return 0;
}
