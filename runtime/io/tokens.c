#include "eellm/tokens.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eellm/outfile.h"
#include "eellm/tokenizer.h"

/* Tokens are mapped and written as they are in memory. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "token files assume a little-endian host");

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* ---- reading ------------------------------------------------------------ */

/* Checks the header fields other than the count. 0, or -1 with the reason in err. */
static int check_info(const char *path, const unsigned char *h, struct eellm_tokens_info *info,
                      char *err, size_t errlen) {
  if (memcmp(h, EELLM_TOKENS_MAGIC, 8) != 0) {
    snprintf(err, errlen, "%s: not an eellm token file (bad magic)", path);
    return -1;
  }
  uint32_t version = get_u32(h + 8);
  if (version != EELLM_TOKENS_VERSION) {
    snprintf(err, errlen,
             "%s: unknown token file version %" PRIu32 " (this build reads version %d)", path,
             version, EELLM_TOKENS_VERSION);
    return -1;
  }
  info->tokenizer = get_u32(h + 12);
  info->vocab_size = get_u32(h + 16);
  info->eot_id = get_u32(h + 20);
  if (!eellm_tokenizer_name(info->tokenizer)) {
    snprintf(err, errlen, "%s: unknown tokenizer id %" PRIu32, path, info->tokenizer);
    return -1;
  }
  if (info->vocab_size < 1 || info->vocab_size > 65536) {
    snprintf(err, errlen, "%s: vocabulary size %" PRIu32 " outside 1..65536", path,
             info->vocab_size);
    return -1;
  }
  if (info->eot_id >= info->vocab_size) {
    snprintf(err, errlen,
             "%s: end-of-text id %" PRIu32 " outside the vocabulary (size %" PRIu32 ")", path,
             info->eot_id, info->vocab_size);
    return -1;
  }
  return 0;
}

static int check_tokens(const char *path, const struct eellm_token_file *file, char *err,
                        size_t errlen) {
  for (uint64_t i = 0; i < file->count; i++)
    if (file->tokens[i] >= file->info.vocab_size) {
      snprintf(err, errlen,
               "%s: token %u at position %" PRIu64 " is outside the vocabulary (size %" PRIu32 ")",
               path, file->tokens[i], i, file->info.vocab_size);
      return -1;
    }
  return 0;
}

/* Maps the file, checking that it is at least a header long. */
static void *map_file(const char *path, size_t *size, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode) || st.st_size < EELLM_TOKENS_HEADER_SIZE) {
    if (S_ISREG(st.st_mode))
      snprintf(err, errlen,
               "%s: not an eellm token file: %lld bytes, shorter than the %d-byte header", path,
               (long long)st.st_size, EELLM_TOKENS_HEADER_SIZE);
    else
      snprintf(err, errlen, "%s: not a regular file", path);
    close(fd);
    return NULL;
  }
  void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int why = errno;
  close(fd);
  if (map == MAP_FAILED) {
    snprintf(err, errlen, "%s: cannot map: %s", path, strerror(why));
    return NULL;
  }
  *size = (size_t)st.st_size;
  return map;
}

struct eellm_token_file *eellm_tokens_open(const char *path, char *err, size_t errlen) {
  struct eellm_token_file *file = calloc(1, sizeof *file);
  if (!file) {
    snprintf(err, errlen, "%s: out of memory", path);
    return NULL;
  }
  file->map = map_file(path, &file->map_size, err, errlen);
  if (!file->map) {
    free(file);
    return NULL;
  }
  const unsigned char *h = file->map;
  if (check_info(path, h, &file->info, err, errlen) != 0) goto fail;
  file->count = get_u64(h + 24);
  uint64_t payload = file->map_size - EELLM_TOKENS_HEADER_SIZE;
  if (file->count > UINT64_MAX / 2 || payload != 2 * file->count) {
    snprintf(err, errlen,
             "%s: header says %" PRIu64 " tokens but the file holds %" PRIu64
             " bytes of tokens (truncated or trailing bytes)",
             path, file->count, payload);
    goto fail;
  }
  file->tokens = (const uint16_t *)(h + EELLM_TOKENS_HEADER_SIZE);
  if (check_tokens(path, file, err, errlen) != 0) goto fail;
  return file;
fail:
  eellm_tokens_close(file);
  return NULL;
}

void eellm_tokens_close(struct eellm_token_file *file) {
  if (!file) return;
  munmap(file->map, file->map_size);
  free(file);
}

/* ---- writing ------------------------------------------------------------ */

struct eellm_tokens_writer {
  struct eellm_outfile out;
  struct eellm_tokens_info info;
  uint64_t count;
};

static void encode_header(unsigned char h[EELLM_TOKENS_HEADER_SIZE],
                          const struct eellm_tokens_info *info, uint64_t count) {
  memcpy(h, EELLM_TOKENS_MAGIC, 8);
  put_u32(h + 8, EELLM_TOKENS_VERSION);
  put_u32(h + 12, info->tokenizer);
  put_u32(h + 16, info->vocab_size);
  put_u32(h + 20, info->eot_id);
  put_u64(h + 24, count);
}

struct eellm_tokens_writer *eellm_tokens_create(const char *path,
                                                const struct eellm_tokens_info *info, char *err,
                                                size_t errlen) {
  unsigned char header[EELLM_TOKENS_HEADER_SIZE]; /* rewritten with the count by commit */
  encode_header(header, info, 0);
  struct eellm_tokens_info checked;
  if (check_info(path, header, &checked, err, errlen) != 0) return NULL;
  struct eellm_tokens_writer *w = calloc(1, sizeof *w);
  if (!w) {
    snprintf(err, errlen, "%s: out of memory", path);
    return NULL;
  }
  w->info = *info;
  if (eellm_outfile_open(&w->out, path, err, errlen) != 0) {
    free(w);
    return NULL;
  }
  if (fwrite(header, sizeof header, 1, w->out.fp) != 1) {
    snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    eellm_tokens_abort(w);
    return NULL;
  }
  return w;
}

int eellm_tokens_append(struct eellm_tokens_writer *w, const uint16_t *ids, size_t n, char *err,
                        size_t errlen) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] >= w->info.vocab_size) {
      snprintf(err, errlen,
               "%s: token %u at position %" PRIu64 " is outside the vocabulary (size %" PRIu32 ")",
               w->out.path, ids[i], w->count + i, w->info.vocab_size);
      return -1;
    }
  if (n && fwrite(ids, sizeof *ids, n, w->out.fp) != n) {
    snprintf(err, errlen, "%s: cannot write: %s", w->out.path, strerror(errno));
    return -1;
  }
  w->count += n;
  return 0;
}

uint64_t eellm_tokens_written(const struct eellm_tokens_writer *w) { return w->count; }

int eellm_tokens_commit(struct eellm_tokens_writer *w, char *err, size_t errlen) {
  unsigned char header[EELLM_TOKENS_HEADER_SIZE];
  encode_header(header, &w->info, w->count);
  if (fseek(w->out.fp, 0, SEEK_SET) != 0 || fwrite(header, sizeof header, 1, w->out.fp) != 1) {
    snprintf(err, errlen, "%s: cannot write: %s", w->out.path, strerror(errno));
    eellm_tokens_abort(w);
    return -1;
  }
  int rc = eellm_outfile_commit(&w->out, err, errlen);
  free(w);
  return rc;
}

void eellm_tokens_abort(struct eellm_tokens_writer *w) {
  if (!w) return;
  eellm_outfile_abort(&w->out);
  free(w);
}
