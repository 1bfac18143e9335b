/* Shared by the fuzz targets (tests/fuzz/fuzz_*.c): each defines
 * LLVMFuzzerTestOneInput, linked either with libFuzzer (the EELLM_FUZZ build,
 * clang -fsanitize=fuzzer,address,undefined) or with replay.c (every build: a
 * main() that feeds it the files of the seed corpus and the regressions).
 *
 * An oracle that fails calls FUZZ_CHECK's abort(), which libFuzzer reports as
 * a crash and keeps the input of. */
#ifndef EELLM_FUZZ_H
#define EELLM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                                       \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      fprintf(stderr, "%s:%d: oracle failed: %s: ", __FILE__, __LINE__, #cond);     \
      fprintf(stderr, __VA_ARGS__);                                                 \
      fputc('\n', stderr);                                                          \
      abort();                                                                      \
    }                                                                               \
  } while (0)

/* An error message as the parsers promise it: non-empty, one line, NUL-terminated
 * within its buffer. */
static inline int fuzz_one_line(const char *err, size_t errlen) {
  size_t n = strnlen(err, errlen);
  return n > 0 && n < errlen && !memchr(err, '\n', n) && !memchr(err, '\r', n);
}

/* A file in memory (memfd) holding the input, for parsers that read paths:
 * "/proc/self/fd/N", rewritten for every input. NULL if memfd fails. */
static inline const char *fuzz_memfile(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("eellm-fuzz", 0);
    if (fd < 0) return NULL;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) != 0) return NULL;
  for (size_t done = 0; done < size;) {
    ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
    if (n <= 0) return NULL;
    done += (size_t)n;
  }
  return path;
}

/* A scratch directory for files the targets write (removed at exit by the
 * caller's atexit, or left in $TMPDIR if the process is killed). */
static inline const char *fuzz_tmpdir(void) {
  static char dir[256];
  if (!dir[0]) {
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/eellm-fuzz-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
      perror("mkdtemp");
      abort();
    }
  }
  return dir;
}

/* A file `name` in fuzz_tmpdir() for a target's output, removed with the
 * directory when the process exits. */
static char fuzz_out[300];
static inline void fuzz_out_remove(void) {
  unlink(fuzz_out);
  rmdir(fuzz_tmpdir());
}
static inline const char *fuzz_out_path(const char *name) {
  if (!fuzz_out[0]) {
    snprintf(fuzz_out, sizeof fuzz_out, "%s/%s", fuzz_tmpdir(), name);
    atexit(fuzz_out_remove);
  }
  return fuzz_out;
}

/* The whole contents of a file, malloc'd; NULL if it cannot be read. */
static inline uint8_t *fuzz_slurp(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    uint8_t *grown = realloc(buf, cap *= 2);
    if (!grown) free(buf);
    buf = grown;
  }
  fclose(f);
  *size = n;
  return buf;
}

#endif
