/* safetensors reader/writer and base64: round trips of every dtype (scalar and
 * empty tensors included), every validation error, atomic writes that fail
 * cleanly, per-tensor checksums, stale temporary files, a mutation/truncation
 * fuzz loop, and a cross-check against a Python reader and writer (json +
 * struct + numpy). */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "eellm/outfile.h"
#include "runtime/io/base64.h"
#include "runtime/io/safetensors.h"
#include "testutil.h"

#define PYTHON "/usr/bin/python3"

static const char *dir;
static char err[512];

/* dir/name in a rotating static buffer (a few live at once). */
static const char *in_dir(const char *name) {
  static char bufs[4][512];
  static int next;
  char *buf = bufs[next++ % 4];
  snprintf(buf, sizeof bufs[0], "%s/%s", dir, name);
  return buf;
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
  FILE *fp = fopen(path, "wb");
  if (!fp || fwrite(bytes, 1, n, fp) != n || fclose(fp) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
}

/* The whole file, malloc'd; NULL if it cannot be read. */
static unsigned char *read_bytes(const char *path, size_t *n) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  *n = (size_t)ftell(fp);
  rewind(fp);
  unsigned char *bytes = malloc(*n + 1);
  if (fread(bytes, 1, *n, fp) != *n) *n = 0;
  fclose(fp);
  return bytes;
}

/* A file with the given header JSON (space-padded to 8) and data section. */
static void write_raw(const char *path, const char *json, const void *data, size_t data_len) {
  size_t json_len = strlen(json), padded = (json_len + 7) / 8 * 8;
  unsigned char *bytes = malloc(8 + padded + data_len + 1);
  for (int k = 0; k < 8; k++) bytes[k] = (unsigned char)((uint64_t)padded >> (8 * k));
  memcpy(bytes + 8, json, json_len);
  memset(bytes + 8 + json_len, ' ', padded - json_len);
  if (data_len) memcpy(bytes + 8 + padded, data, data_len);
  write_bytes(path, bytes, 8 + padded + data_len);
  free(bytes);
}

/* How many of the writer's "*.tmp.*" files directory in holds. */
static int temp_files_in(const char *in) {
  DIR *d = opendir(in);
  int found = 0;
  for (struct dirent *e; d && (e = readdir(d));) found += strstr(e->d_name, ".tmp.") != NULL;
  if (d) closedir(d);
  return found;
}

/* Opening path must fail with a one-line error naming it and containing want. */
static void expect_open_error(const char *path, const char *want, const char *what) {
  struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
  char msg[800];
  snprintf(msg, sizeof msg,
           "%s: rejected with a one-line error naming the file, mentioning '%s' "
           "(got '%s')",
           what, want, f ? "opened" : err);
  tu_ok(!f && strstr(err, path) && strstr(err, want) && !strchr(err, '\n'), msg);
  eellm_st_close(f);
}

static void expect_header_error(const char *json, size_t data_len, const char *want,
                                const char *what) {
  static unsigned char zeros[256];
  const char *path = in_dir("bad.safetensors");
  if (data_len > sizeof zeros) exit(1);
  write_raw(path, json, zeros, data_len);
  expect_open_error(path, want, what);
}

/* ---- tensors with known contents ------------------------------------------ */

struct spec {
  const char *name;
  enum eellm_dtype dtype;
  int ndim;
  int64_t shape[3];
};

/* Given order = offset order; the odd-sized U8 first leaves the next ones misaligned. */
static const struct spec specs[] = {
    {"mask.u8", EELLM_U8, 1, {7}},    {"layer.0.w", EELLM_F32, 2, {2, 3}},
    {"layer.0.b", EELLM_F64, 1, {4}}, {"idx", EELLM_I32, 3, {2, 2, 2}},
    {"tok", EELLM_I64, 1, {3}},       {"u16", EELLM_U16, 1, {5}},
    {"scalar", EELLM_F32, 0, {0}},    {"empty.\xc3\xb1", EELLM_F32, 2, {0, 4}},
};
#define N_SPECS (sizeof specs / sizeof specs[0])

/* Element k of every test tensor of dtype d (the Python script uses the same formulas). */
static double value_of(enum eellm_dtype d, int64_t k) {
  switch (d) {
    case EELLM_F32:
    case EELLM_F64:
      return 0.25 * (double)k - 1;
    case EELLM_I32:
      return 3.0 * (double)k - 5;
    case EELLM_I64:
      return 3.0 * (double)k - 5 + 1099511627776.0;
    case EELLM_U16:
      return 1000.0 * (double)k + 1;
    case EELLM_U8:
      return (double)(37 * k % 256);
  }
  return 0;
}

static double element(enum eellm_dtype d, const void *data, int64_t k) {
  switch (d) {
    case EELLM_F32:
      return ((const float *)data)[k];
    case EELLM_F64:
      return ((const double *)data)[k];
    case EELLM_I32:
      return ((const int32_t *)data)[k];
    case EELLM_I64:
      return (double)((const int64_t *)data)[k];
    case EELLM_U16:
      return ((const uint16_t *)data)[k];
    case EELLM_U8:
      return ((const uint8_t *)data)[k];
  }
  return 0;
}

static void set_element(enum eellm_dtype d, void *data, int64_t k, double v) {
  switch (d) {
    case EELLM_F32:
      ((float *)data)[k] = (float)v;
      break;
    case EELLM_F64:
      ((double *)data)[k] = v;
      break;
    case EELLM_I32:
      ((int32_t *)data)[k] = (int32_t)v;
      break;
    case EELLM_I64:
      ((int64_t *)data)[k] = (int64_t)v;
      break;
    case EELLM_U16:
      ((uint16_t *)data)[k] = (uint16_t)v;
      break;
    case EELLM_U8:
      ((uint8_t *)data)[k] = (uint8_t)v;
      break;
  }
}

static int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  return n;
}

/* tensors[i] describes specs[i], filled by value_of; free each data afterwards. */
static void make_tensors(struct eellm_st_tensor *tensors) {
  for (size_t i = 0; i < N_SPECS; i++) {
    const struct spec *s = &specs[i];
    int64_t n = numel(s->ndim, s->shape);
    struct eellm_st_tensor *t = &tensors[i];
    *t = (struct eellm_st_tensor){.name = s->name, .dtype = s->dtype, .ndim = s->ndim};
    memcpy(t->shape, s->shape, sizeof s->shape);
    t->nbytes = (size_t)n * eellm_dtype_size(s->dtype);
    void *data = n ? malloc(t->nbytes) : NULL;
    for (int64_t k = 0; k < n; k++) set_element(s->dtype, data, k, value_of(s->dtype, k));
    t->data = data;
  }
}

static void free_tensors(struct eellm_st_tensor *tensors, size_t n) {
  for (size_t i = 0; i < n; i++) free((void *)tensors[i].data);
}

/* t read back must be exactly specs[i]: dtype, shape, aligned data, values. */
static int matches_spec(const struct eellm_st_tensor *t, const struct spec *s) {
  if (!t || strcmp(t->name, s->name) != 0 || t->dtype != s->dtype || t->ndim != s->ndim) return 0;
  for (int d = 0; d < s->ndim; d++)
    if (t->shape[d] != s->shape[d]) return 0;
  int64_t n = numel(s->ndim, s->shape);
  if (t->nbytes != (size_t)n * eellm_dtype_size(s->dtype)) return 0;
  if ((uintptr_t)t->data % eellm_dtype_size(s->dtype) != 0) return 0;
  for (int64_t k = 0; k < n; k++)
    if (element(s->dtype, t->data, k) != value_of(s->dtype, k)) return 0;
  return 1;
}

static void check_all_specs(const struct eellm_st_file *f, const char *what) {
  char msg[200];
  tu_ok(f && eellm_st_count(f) == N_SPECS, what);
  for (size_t i = 0; f && i < N_SPECS; i++) {
    snprintf(msg, sizeof msg, "%s: tensor '%s' has its dtype, shape and values", what,
             specs[i].name);
    tu_ok(matches_spec(eellm_st_find(f, specs[i].name), &specs[i]), msg);
  }
}

/* ---- tests ------------------------------------------------------------------ */

static void test_dtypes(void) {
  static const char *names[] = {"F32", "F64", "I32", "I64", "U16", "U8"};
  static const size_t sizes[] = {4, 8, 4, 8, 2, 1};
  int ok = 1;
  for (int d = 0; d < 6; d++)
    ok &= strcmp(eellm_dtype_name((enum eellm_dtype)d), names[d]) == 0 &&
          eellm_dtype_size((enum eellm_dtype)d) == sizes[d];
  ok &= strcmp(eellm_dtype_name((enum eellm_dtype)6), "?") == 0 &&
        eellm_dtype_size((enum eellm_dtype)6) == 0;
  tu_ok(ok, "dtype names and sizes");
}

static void test_round_trip(void) {
  struct eellm_st_tensor tensors[N_SPECS];
  make_tensors(tensors);
  unsigned char blob[100];
  for (size_t i = 0; i < sizeof blob; i++) blob[i] = (unsigned char)(i * 131 + 7);
  char *spec_b64 = eellm_base64_encode(blob, sizeof blob);
  const char *meta[] = {"format",  "pt",
                        "spec",    spec_b64,
                        "unicode", "h\xc3\xa9llo \xe2\x88\x91",
                        "empty",   "",
                        "escapes", "a \"q\" \\ \n\t end"};
  const char *path = in_dir("round.safetensors");
  tu_ok(eellm_st_write(path, tensors, N_SPECS, meta, 5, err, sizeof err) == 0, "write 8 tensors");
  struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
  if (!f) printf("open: %s\n", err);
  check_all_specs(f, "round trip");
  int in_order = f != NULL;
  for (size_t i = 0; f && i < N_SPECS; i++)
    in_order &= eellm_st_at(f, i) == eellm_st_find(f, specs[i].name);
  tu_ok(in_order, "eellm_st_at follows the data offsets (the written order)");
  tu_ok(f && !eellm_st_at(f, N_SPECS) && !eellm_st_find(f, "nope") && !eellm_st_find(f, NULL),
        "at past the end and find of an absent name give NULL");
  int meta_ok = f != NULL;
  for (int i = 0; f && i < 5; i++) {
    const char *got = eellm_st_meta(f, meta[2 * i]);
    meta_ok &= got && strcmp(got, meta[2 * i + 1]) == 0;
  }
  tu_ok(meta_ok && !eellm_st_meta(f, "absent"), "metadata round trip");
  size_t n = 0;
  unsigned char *decoded = f ? eellm_base64_decode(eellm_st_meta(f, "spec"), &n) : NULL;
  tu_ok(decoded && n == sizeof blob && memcmp(decoded, blob, n) == 0,
        "base64 blob in metadata round trip");
  free(decoded);
  free(spec_b64);
  eellm_st_close(f);

  tu_ok(eellm_st_write(path, tensors, 2, NULL, 0, err, sizeof err) == 0, "write without metadata");
  f = eellm_st_open(path, err, sizeof err);
  tu_ok(f && eellm_st_count(f) == 2 && !eellm_st_meta(f, "format"),
        "overwritten file has 2 tensors and no metadata");
  eellm_st_close(f);
  tu_ok(eellm_st_write(path, NULL, 0, NULL, 0, err, sizeof err) == 0, "write nothing");
  f = eellm_st_open(path, err, sizeof err);
  tu_ok(f && eellm_st_count(f) == 0 && !eellm_st_at(f, 0), "empty file has no tensors");
  eellm_st_close(f);
  free_tensors(tensors, N_SPECS);
}

/* (c) the header length is a multiple of 8, the padding is spaces, the sizes add up. */
static void test_header_padding(void) {
  int ok = 1;
  uint8_t byte = 1;
  for (int len = 1; len <= 16; len++) {
    char name[17] = {0};
    memset(name, 'x', (size_t)len);
    struct eellm_st_tensor t = {name, EELLM_U8, 1, {1}, &byte, 1};
    const char *path = in_dir("pad.safetensors");
    ok &= eellm_st_write(path, &t, 1, NULL, 0, err, sizeof err) == 0;
    size_t n;
    unsigned char *bytes = read_bytes(path, &n);
    uint64_t header_len = 0;
    for (int k = 0; k < 8; k++) header_len |= (uint64_t)bytes[k] << (8 * k);
    ok &= header_len % 8 == 0 && 8 + header_len + 1 == n;
    size_t json_end = 8 + header_len;
    while (json_end > 8 && bytes[json_end - 1] == ' ') json_end--;
    ok &= bytes[json_end - 1] == '}' && 8 + header_len - json_end < 8;
    free(bytes);
  }
  tu_ok(ok, "header length is a multiple of 8, padded with spaces, and sizes add up");
}

static void test_bad_write_arguments(void) {
  float x[4] = {0};
  const char *path = in_dir("never.safetensors");
  const struct {
    struct eellm_st_tensor t[2];
    size_t n;
    const char *what;
  } cases[] = {
      {{{"a", EELLM_F32, 1, {4}, x, 12}}, 1, "nbytes not matching the shape"},
      {{{"a", EELLM_F32, 1, {-4}, x, 16}}, 1, "negative dimension"},
      {{{"a", EELLM_F32, 9, {1}, x, 4}}, 1, "9 dimensions"},
      {{{"a", (enum eellm_dtype)42, 1, {4}, x, 16}}, 1, "invalid dtype"},
      {{{"a", EELLM_F32, 1, {4}, NULL, 16}}, 1, "NULL data"},
      {{{NULL, EELLM_F32, 1, {4}, x, 16}}, 1, "NULL name"},
      {{{"__metadata__", EELLM_F32, 1, {4}, x, 16}}, 1, "tensor named __metadata__"},
      {{{"a\xff", EELLM_F32, 1, {4}, x, 16}}, 1, "name not UTF-8"},
      {{{"a", EELLM_F32, 1, {4}, x, 16}, {"a", EELLM_F32, 1, {4}, x, 16}}, 2, "duplicate name"},
  };
  char msg[200];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int rc = eellm_st_write(path, cases[i].t, cases[i].n, NULL, 0, err, sizeof err);
    snprintf(msg, sizeof msg, "write refuses %s with an error naming the path", cases[i].what);
    tu_ok(rc == -1 && strstr(err, path) && access(path, F_OK) != 0, msg);
  }
  struct eellm_st_tensor ok_tensor = {"a", EELLM_F32, 1, {4}, x, 16};
  const char *dup_meta[] = {"k", "1", "k", "2"}, *null_meta[] = {"k", NULL};
  tu_ok(eellm_st_write(path, &ok_tensor, 1, dup_meta, 2, err, sizeof err) == -1 &&
            eellm_st_write(path, &ok_tensor, 1, null_meta, 1, err, sizeof err) == -1 &&
            strstr(err, path) && access(path, F_OK) != 0,
        "write refuses duplicate metadata keys and NULL values");
}

static void test_validation(void) {
  const char *path = in_dir("short.safetensors");
  write_bytes(path, "\x08\0\0\0\0", 5);
  expect_open_error(path, "shorter than", "5-byte file");
  write_bytes(path, "", 0);
  expect_open_error(path, "shorter than", "empty file");
  write_bytes(path, "\x64\0\0\0\0\0\0\0{}        ", 18);
  expect_open_error(path, "header length 100 is absurd", "header length past the end");
  write_bytes(path, "\0\0\0\0\0\0\0\x80{}      ", 16);
  expect_open_error(path, "absurd", "header length 2^63");
  expect_open_error(in_dir("missing.safetensors"), "cannot open", "missing file");
  expect_open_error(dir, "not a regular file", "a directory");

  expect_header_error("", 0, "not valid JSON", "empty header");
  expect_header_error("{not json", 0, "not valid JSON", "header not JSON");
  expect_header_error("[]", 0, "not a JSON object", "header an array");
  expect_header_error("{\"a\xff\":1}", 0, "not valid JSON", "header not UTF-8");
  expect_header_error("{\"a\\u0000b\":{}}", 0, "not valid JSON", "NUL in a name");
  expect_header_error(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
      2, "duplicate", "duplicate tensor name");
  expect_header_error("{\"a\":3}", 0, "tensor 'a': entry is not an object", "entry a number");
  expect_header_error("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                      "tensor 'a': dtype is missing", "missing dtype");
  expect_header_error("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                      "not a string", "dtype a number");
  expect_header_error("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
                      "unknown dtype 'BF16'", "unknown dtype");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "shape is missing",
                      "missing shape");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4,
                      "not an array", "shape a number");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
                      "non-integer dimension", "shape of reals");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4,
                      "non-integer dimension", "shape of strings");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                      "negative", "negative dimension");
  expect_header_error(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
      "\"data_offsets\":[0,1]}}",
      1, "over 8 dimensions", "9 dimensions");
  expect_header_error(
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1099511627776],"
      "\"data_offsets\":[0,1]}}",
      1, "too large", "shape overflowing int64");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets is missing",
                      "missing data_offsets");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                      "data_offsets", "one offset");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4,
                      "data_offsets", "string offset");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
                      "data_offsets", "negative offset");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
                      "data_offsets", "begin after end");
  expect_header_error(
      "{\"transformer.h.0.ln_1.weight\":{\"dtype\":\"F32\",\"shape\":[64],"
      "\"data_offsets\":[0,100]}}",
      100,
      "tensor 'transformer.h.0.ln_1.weight': data_offsets [0, 100] do not match "
      "dtype F32 and shape [64] (256 bytes)",
      "byte size not matching the shape");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                      "run past the data section (4 bytes)", "offsets past the data section");
  expect_header_error(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
      12, "tensor 'b' overlaps tensor 'a'", "overlapping tensors");
  expect_header_error(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
      8, "overlaps", "empty tensor inside another");
  expect_header_error(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
      12, "gap of 4 bytes before tensor 'b'", "gap between tensors");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                      "gap of 4 bytes before tensor 'a'", "first tensor not at offset 0");
  expect_header_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6,
                      "2 bytes of trailing data", "trailing garbage");
  expect_header_error("{}", 3, "3 bytes of trailing data", "data without tensors");
  expect_header_error("{\"__metadata__\":{\"k\":1}}", 0,
                      "__metadata__ value of 'k' is not a string", "metadata value a number");
  expect_header_error("{\"__metadata__\":[\"k\"]}", 0, "__metadata__ is not an object",
                      "metadata an array");
  expect_header_error("{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                      "tensor 'a?b'", "newline in a name stays on one line");

  struct eellm_st_tensor tensors[N_SPECS];
  make_tensors(tensors);
  const char *whole = in_dir("whole.safetensors");
  eellm_st_write(whole, tensors, N_SPECS, NULL, 0, err, sizeof err);
  free_tensors(tensors, N_SPECS);
  size_t n;
  unsigned char *bytes = read_bytes(whole, &n);
  write_bytes(path, bytes, n - 1);
  expect_open_error(path, "truncated file?", "file cut by one byte");
  free(bytes);
}

/* Files from other writers: an unpadded header, whitespace, reordered keys, extra keys. */
static void test_lenient_inputs(void) {
  const char *path = in_dir("foreign.safetensors");
  const unsigned char data[11] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  static const char json[] =
      "{ \"b\" : {\"data_offsets\":[3,11],\"shape\":[2],\"dtype\":\"I32\"},\n"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3],\"x\":1} }";
  size_t json_len = sizeof json - 1;
  unsigned char bytes[8 + sizeof json + sizeof data];
  for (int k = 0; k < 8; k++) bytes[k] = (unsigned char)((uint64_t)json_len >> (8 * k));
  memcpy(bytes + 8, json, json_len);
  memcpy(bytes + 8 + json_len, data, sizeof data);
  write_bytes(path, bytes, 8 + json_len + sizeof data);
  struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
  if (!f) printf("foreign: %s\n", err);
  const struct eellm_st_tensor *b = f ? eellm_st_find(f, "b") : NULL;
  int32_t want[2];
  memcpy(want, data + 3, 8);
  tu_ok(f && eellm_st_count(f) == 2 && strcmp(eellm_st_at(f, 0)->name, "a") == 0 && b &&
            (uintptr_t)b->data % 4 == 0 && memcmp(b->data, want, 8) == 0,
        "unpadded header, whitespace, any key order, extra keys, misaligned I32 data");
  eellm_st_close(f);
}

/* Every opened file must be internally consistent; touching every byte lets ASan check bounds. */
static int consistent(const struct eellm_st_file *f, size_t data_len) {
  static volatile unsigned sink;
  size_t total = 0;
  unsigned sum = 0;
  for (size_t i = 0; i < eellm_st_count(f); i++) {
    const struct eellm_st_tensor *t = eellm_st_at(f, i);
    int64_t n = numel(t->ndim, t->shape);
    if (t->nbytes != (size_t)n * eellm_dtype_size(t->dtype) || eellm_st_find(f, t->name) != t ||
        (uintptr_t)t->data % eellm_dtype_size(t->dtype) != 0)
      return 0;
    for (size_t k = 0; k < t->nbytes; k++) sum += ((const unsigned char *)t->data)[k];
    total += t->nbytes;
  }
  const char *format = eellm_st_meta(f, "format");
  sink += sum + (format ? (unsigned)strlen(format) : 0);
  return total == data_len;
}

static void test_fuzz(void) {
  uint8_t u8[5] = {1, 2, 3, 4, 5};
  float w[6] = {1, 2, 3, 4, 5, 6};
  int64_t tok[2] = {-1, 7};
  struct eellm_st_tensor tensors[] = {
      {"u8", EELLM_U8, 1, {5}, u8, 5},
      {"w", EELLM_F32, 2, {2, 3}, w, 24},
      {"tok", EELLM_I64, 1, {2}, tok, 16},
      {"s", EELLM_F32, 0, {0}, w, 4},
  };
  const char *meta[] = {"format", "pt", "spec", "AAEC"};
  const char *seed = in_dir("seed.safetensors"), *path = in_dir("fuzz.safetensors");
  eellm_st_write(seed, tensors, 4, meta, 2, err, sizeof err);
  size_t n;
  unsigned char *orig = read_bytes(seed, &n);
  uint64_t header_len = 0;
  for (int k = 0; k < 8; k++) header_len |= (uint64_t)orig[k] << (8 * k);

  int truncations_rejected = 1;
  for (size_t len = 0; len < n; len++) {
    write_bytes(path, orig, len);
    struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
    truncations_rejected &= !f && strstr(err, path) != NULL;
    eellm_st_close(f);
  }
  tu_ok(truncations_rejected, "every truncation of a valid file is rejected");

  static const char json_chars[] = "{}[]\",:0123456789-.eE \\";
  unsigned char *mutant = malloc(n + 8);
  int opened = 0, all_consistent = 1, all_named = 1;
  const int rounds = 3000;
  tu_seed(42);
  for (int round = 0; round < rounds; round++) {
    size_t len = n;
    memcpy(mutant, orig, n);
    int edits = 1 + (int)tu_uniform(0, 3);
    for (int e = 0; e < edits; e++) {
      /* most edits land in the header, where the parser is */
      size_t span = tu_uniform(0, 1) < 0.8 ? (size_t)header_len + 8 : len;
      size_t at = (size_t)tu_uniform(0, (double)(span < len ? span : len));
      double kind = tu_uniform(0, 1);
      if (kind < 0.4) {
        mutant[at] = (unsigned char)json_chars[(int)tu_uniform(0, sizeof json_chars - 1)];
      } else if (kind < 0.7) {
        mutant[at] ^= (unsigned char)(1u << (int)tu_uniform(0, 8));
      } else if (kind < 0.85 && len > 1) {
        memmove(mutant + at, mutant + at + 1, len - at - 1);
        len--;
      } else if (len < n + 8) {
        memmove(mutant + at + 1, mutant + at, len - at);
        mutant[at] = (unsigned char)tu_uniform(0, 256);
        len++;
      }
    }
    write_bytes(path, mutant, len);
    struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
    if (f) {
      uint64_t mutant_header_len = 0;
      for (int k = 0; k < 8; k++) mutant_header_len |= (uint64_t)mutant[k] << (8 * k);
      opened++;
      all_consistent &= consistent(f, len - 8 - (size_t)mutant_header_len);
    } else {
      all_named &= strstr(err, path) != NULL && strchr(err, '\n') == NULL;
    }
    eellm_st_close(f);
  }
  printf("fuzz: %d of %d mutants opened, the rest rejected\n", opened, rounds);
  tu_ok(all_consistent, "every mutant that opens is consistent and its data readable");
  tu_ok(all_named, "every rejected mutant gets a one-line error naming the file");
  free(mutant);
  free(orig);
}

/* (a) unwritable places fail cleanly; (b) a failed write leaves the old file intact. */
static void test_atomic_write(void) {
  float x[4] = {1, 2, 3, 4};
  struct eellm_st_tensor small = {"x", EELLM_F32, 1, {4}, x, 16};
  const char *missing = in_dir("no/such/dir/x.safetensors");
  tu_ok(eellm_st_write(missing, &small, 1, NULL, 0, err, sizeof err) == -1 &&
            strstr(err, missing) && !temp_files_in(dir),
        "write into a missing directory fails with its path and leaves no temp file");

  const char *proc = "/proc/self/x.safetensors";
  tu_ok(eellm_st_write(proc, &small, 1, NULL, 0, err, sizeof err) == -1 && strstr(err, proc),
        "write into /proc (never writable) fails with its path");

  const char *ro_dir = in_dir("readonly");
  mkdir(ro_dir, 0555);
  if (geteuid() != 0) {
    const char *ro = in_dir("readonly/x.safetensors");
    tu_ok(eellm_st_write(ro, &small, 1, NULL, 0, err, sizeof err) == -1 && strstr(err, ro) &&
              !temp_files_in(ro_dir) && access(ro, F_OK) != 0,
          "write into a read-only directory fails with its path and leaves no temp file");
  } else {
    printf("running as root: read-only directory case skipped (root may write there)\n");
  }

  const char *is_dir = in_dir("isdir.safetensors");
  mkdir(is_dir, 0755);
  write_bytes(in_dir("isdir.safetensors/inside"), "x", 1);
  tu_ok(eellm_st_write(is_dir, &small, 1, NULL, 0, err, sizeof err) == -1 && strstr(err, is_dir) &&
            !temp_files_in(dir) && access(in_dir("isdir.safetensors/inside"), F_OK) == 0,
        "failed rename over a directory leaves no temp file and the directory as it was");

  const char *keep = in_dir("keep.safetensors");
  tu_ok(eellm_st_write(keep, &small, 1, NULL, 0, err, sizeof err) == 0, "write the file to keep");
  size_t before_len, after_len;
  unsigned char *before = read_bytes(keep, &before_len);
  enum { BIG = 1 << 16 };
  float *big = calloc(BIG, sizeof *big);
  struct eellm_st_tensor large = {"x", EELLM_F32, 1, {BIG}, big, BIG * sizeof *big};
  /* A 4 KiB file-size limit makes the write itself fail (EFBIG), as a full disk would. */
  struct rlimit saved, limited;
  getrlimit(RLIMIT_FSIZE, &saved);
  limited = saved;
  limited.rlim_cur = 4096;
  signal(SIGXFSZ, SIG_IGN);
  setrlimit(RLIMIT_FSIZE, &limited);
  int rc = eellm_st_write(keep, &large, 1, NULL, 0, err, sizeof err);
  setrlimit(RLIMIT_FSIZE, &saved);
  printf("write under a 4 KiB size limit: %s\n", err);
  unsigned char *after = read_bytes(keep, &after_len);
  struct eellm_st_file *f = eellm_st_open(keep, err, sizeof err);
  tu_ok(rc == -1 && strstr(err, keep) && !temp_files_in(dir) && after_len == before_len &&
            memcmp(after, before, before_len) == 0 && f && eellm_st_count(f) == 1 &&
            eellm_st_find(f, "x")->nbytes == 16,
        "a write failing mid-file leaves the old file intact and readable, and no temp file");
  eellm_st_close(f);
  free(before);
  free(after);
  free(big);
}

/* (g) every tensor carries a CRC32C: a flipped data byte names its tensor;
 * EELLM_NO_CHECKSUM=1 skips the check; files without checksums still load. */
static void test_checksums(void) {
  float x[4] = {1, 2, 3, 4}, y[3] = {5, 6, 7};
  struct eellm_st_tensor two[] = {{"a.weight", EELLM_F32, 1, {4}, x, 16},
                                  {"b.bias", EELLM_F32, 1, {3}, y, 12}};
  const char *path = in_dir("sums.safetensors");
  tu_ok(eellm_st_write(path, two, 2, NULL, 0, err, sizeof err) == 0, "write with checksums");
  struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
  tu_ok(f && eellm_st_meta(f, "crc32c.a.weight") && strlen(eellm_st_meta(f, "crc32c.b.bias")) == 8,
        "a crc32c.<name> metadata entry of 8 hex digits per tensor");
  eellm_st_close(f);
  size_t n;
  unsigned char *bytes = read_bytes(path, &n);
  bytes[n - 1] ^= 0x10; /* the last byte: b.bias's data */
  const char *bad = in_dir("flipped.safetensors");
  write_bytes(bad, bytes, n);
  f = eellm_st_open(bad, err, sizeof err);
  printf("flipped byte: %s\n", err);
  tu_ok(!f && strstr(err, bad) && strstr(err, "tensor 'b.bias' fails its checksum (file damaged"),
        "a flipped data byte fails the checksum of its tensor, named");
  eellm_st_close(f);
  setenv("EELLM_NO_CHECKSUM", "1", 1);
  f = eellm_st_open(bad, err, sizeof err);
  tu_ok(f && eellm_st_count(f) == 2, "EELLM_NO_CHECKSUM=1 skips the check");
  eellm_st_close(f);
  unsetenv("EELLM_NO_CHECKSUM");
  free(bytes);
  const char *meta[] = {"crc32c.a.weight", "00000000"};
  tu_ok(eellm_st_write(path, two, 2, meta, 1, err, sizeof err) == -1 && strstr(err, "reserved"),
        "crc32c.<tensor> metadata keys are reserved");
}

/* (h) temporary files of dead writers go at the next write; a live process's stay. */
static void test_stale_temps(void) {
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, NULL, 0);
  pid_t live = fork();
  if (live == 0) {
    pause();
    _exit(0);
  }
  mkdir(in_dir("stale"), 0755);
  char name[128];
  const char *kinds[][2] = {{"x.safetensors.tmp.%ld.0", "dead"},  {"x.safetensors.tmp.%ld.7", "live"},
                            {"y.safetensors.tmp.%ld.0", "dead"},  {"x.safetensors.tmp.%ldz.0", "dead"},
                            {"x.safetensors.tmp.%ld", "dead"}};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    snprintf(name, sizeof name, kinds[i][0], (long)(strcmp(kinds[i][1], "dead") ? live : dead));
    char path[600];
    snprintf(path, sizeof path, "%s/stale/%s", dir, name);
    write_bytes(path, "junk", 4);
  }
  float x[1] = {1};
  struct eellm_st_tensor one = {"x", EELLM_F32, 1, {1}, x, 4};
  tu_ok(eellm_st_write(in_dir("stale/x.safetensors"), &one, 1, NULL, 0, err, sizeof err) == 0,
        "write next to stale temporary files");
  char path[600];
  snprintf(path, sizeof path, "%s/stale/x.safetensors.tmp.%ld.0", dir, (long)dead);
  int dead_gone = access(path, F_OK) != 0;
  snprintf(path, sizeof path, "%s/stale/x.safetensors.tmp.%ld.7", dir, (long)live);
  int live_kept = access(path, F_OK) == 0;
  snprintf(path, sizeof path, "%s/stale/y.safetensors.tmp.%ld.0", dir, (long)dead);
  int other_kept = access(path, F_OK) == 0;
  snprintf(path, sizeof path, "%s/stale/x.safetensors.tmp.%ldz.0", dir, (long)dead);
  int odd_kept = access(path, F_OK) == 0;
  tu_ok(dead_gone && live_kept && other_kept && odd_kept,
        "a write removes its file's temporaries of dead processes only (live, other names kept)");
  tu_ok(eellm_outfile_remove_stale(in_dir("stale/x.safetensors")) == 0,
        "nothing stale is left to remove");
  kill(live, SIGKILL);
  waitpid(live, NULL, 0);
  tu_ok(eellm_outfile_remove_stale(in_dir("stale/x.safetensors")) == 1,
        "once its process is gone, the live one's temporary file goes too");
}

static void test_base64(void) {
  /* RFC 4648 section 10 */
  static const char *vectors[][2] = {{"", ""},
                                     {"f", "Zg=="},
                                     {"fo", "Zm8="},
                                     {"foo", "Zm9v"},
                                     {"foob", "Zm9vYg=="},
                                     {"fooba", "Zm9vYmE="},
                                     {"foobar", "Zm9vYmFy"}};
  int ok = 1;
  for (int i = 0; i < 7; i++) {
    char *enc = eellm_base64_encode(vectors[i][0], strlen(vectors[i][0]));
    size_t n = 99;
    unsigned char *dec = eellm_base64_decode(vectors[i][1], &n);
    ok &= enc && strcmp(enc, vectors[i][1]) == 0 && dec && n == strlen(vectors[i][0]) &&
          memcmp(dec, vectors[i][0], n) == 0;
    free(enc);
    free(dec);
  }
  tu_ok(ok, "base64 RFC 4648 test vectors");

  static const char *invalid[] = {
      "Zg=",  "Zg",   "Z===", "====", "Zg==Zg==", "Zm9v\n", "Zm 9",  "Zm9-",
      "Zm9_", "Zh==", "Zm9=", "Z=g=", "=Zg=",     "Zm=v",   "Zm9v=", "\x80Zm9"};
  ok = 1;
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
    size_t n;
    unsigned char *dec = eellm_base64_decode(invalid[i], &n);
    if (dec) printf("FAIL base64 accepted '%s'\n", invalid[i]);
    ok &= dec == NULL;
    free(dec);
  }
  tu_ok(ok, "base64 decode rejects bad characters, lengths, padding and non-zero trailing bits");

  ok = 1;
  unsigned char buf[300];
  tu_seed(7);
  for (int round = 0; round < 2000; round++) {
    size_t len = (size_t)tu_uniform(0, sizeof buf);
    for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)tu_uniform(0, 256);
    char *enc = eellm_base64_encode(buf, len);
    size_t n;
    unsigned char *dec = eellm_base64_decode(enc, &n);
    ok &= strlen(enc) == (len + 2) / 3 * 4 && dec && n == len && memcmp(dec, buf, len) == 0;
    free(enc);
    free(dec);
  }
  tu_ok(ok, "base64 round trip of 2000 random buffers (0..299 bytes)");
}

/* ---- Python cross-check ------------------------------------------------------- */

static const char python_script[] =
    "import json, struct, sys\n"
    "try:\n"
    "    import numpy as np\n"
    "except ImportError:\n"
    "    sys.exit(77)\n"
    "DT = {'F32': '<f4', 'F64': '<f8', 'I32': '<i4', 'I64': '<i8', 'U16': '<u2', 'U8': 'u1'}\n"
    "def expected(dtype, shape):\n"
    "    k = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)\n"
    "    v = {'F32': 0.25 * k - 1, 'F64': 0.25 * k - 1, 'I32': 3 * k - 5,\n"
    "         'I64': 3 * k - 5 + 2.0**40, 'U16': 1000 * k + 1, 'U8': (37 * k) % 256}[dtype]\n"
    "    return v.astype(DT[dtype]).reshape(shape)\n"
    "mode, path, meta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
    "specs = {}\n"
    "for arg in sys.argv[4:]:\n"
    "    name, dtype, dims = arg.split('\\t')\n"
    "    specs[name] = (dtype, [int(d) for d in dims.split(',') if d])\n"
    "if mode == 'check':\n"
    "    buf = open(path, 'rb').read()\n"
    "    (n,) = struct.unpack('<Q', buf[:8])\n"
    "    assert n % 8 == 0, n\n"
    "    raw = buf[8:8 + n]\n"
    "    assert raw.rstrip(b' ').endswith(b'}') and n - len(raw.rstrip(b' ')) < 8\n"
    "    header, data = json.loads(raw.decode('utf-8')), buf[8 + n:]\n"
    "    def crc32c(b):\n"
    "        crc = 0xffffffff\n"
    "        for x in b:\n"
    "            crc ^= x\n"
    "            for _ in range(8):\n"
    "                crc = (crc >> 1) ^ (0x82f63b78 & -(crc & 1))\n"
    "        return crc ^ 0xffffffff\n"
    "    assert crc32c(b'123456789') == 0xe3069283\n"
    "    stored = header.pop('__metadata__')\n"
    "    sums = {k[7:]: v for k, v in stored.items() if k.startswith('crc32c.')}\n"
    "    assert {k: v for k, v in stored.items() if not k.startswith('crc32c.')} == meta\n"
    "    assert list(header) == list(specs), (list(header), list(specs))\n"
    "    assert sorted(sums) == sorted(specs), sums\n"
    "    for name, info in header.items():\n"
    "        b, e = info['data_offsets']\n"
    "        assert sums[name] == '%08x' % crc32c(data[b:e]), (name, sums[name])\n"
    "    end = 0\n"
    "    for name, info in header.items():\n"
    "        dtype, shape = specs[name]\n"
    "        assert info['dtype'] == dtype and info['shape'] == shape, (name, info)\n"
    "        b, e = info['data_offsets']\n"
    "        assert b == end, (name, b, end)\n"
    "        end = e\n"
    "        got = np.frombuffer(data[b:e], dtype=DT[dtype]).reshape(shape)\n"
    "        assert np.array_equal(got, expected(dtype, shape)), (name, got)\n"
    "    assert end == len(data)\n"
    "else:\n"
    "    # laid out as the safetensors package does: larger dtypes first (so data stays\n"
    "    # aligned) then by name, compact UTF-8 JSON, header padded with spaces to 8\n"
    "    order = sorted(specs, key=lambda k: (-np.dtype(DT[specs[k][0]]).itemsize, k))\n"
    "    header, blobs, offset = {'__metadata__': meta}, [], 0\n"
    "    for name in order:\n"
    "        dtype, shape = specs[name]\n"
    "        blob = expected(dtype, shape).tobytes()\n"
    "        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [offset, offset + "
    "len(blob)]}\n"
    "        blobs.append(blob)\n"
    "        offset += len(blob)\n"
    "    raw = json.dumps(header, separators=(',', ':'), ensure_ascii=False).encode('utf-8')\n"
    "    raw += b' ' * ((8 - len(raw) % 8) % 8)\n"
    "    with open(path, 'wb') as f:\n"
    "        f.write(struct.pack('<Q', len(raw)) + raw + b''.join(blobs))\n";

/* Runs the script with mode, path, metadata JSON and one "name\tDTYPE\td0,d1" per spec;
 * returns its exit status (77: numpy missing). */
static int run_python(const char *mode, const char *path, const char *meta_json) {
  const char *script = in_dir("cross_check.py");
  write_bytes(script, python_script, sizeof python_script - 1);
  char spec_args[N_SPECS][128];
  char *argv[6 + N_SPECS] = {PYTHON, (char *)script, (char *)mode, (char *)path, (char *)meta_json};
  for (size_t i = 0; i < N_SPECS; i++) {
    int used = snprintf(spec_args[i], sizeof spec_args[i], "%s\t%s\t", specs[i].name,
                        eellm_dtype_name(specs[i].dtype));
    for (int d = 0; d < specs[i].ndim; d++)
      used += snprintf(spec_args[i] + used, sizeof spec_args[i] - (size_t)used, "%s%lld",
                       d ? "," : "", (long long)specs[i].shape[d]);
    argv[5 + i] = spec_args[i];
  }
  argv[5 + N_SPECS] = NULL;
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    execv(PYTHON, argv);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void test_python(void) {
  if (access(PYTHON, X_OK) != 0) {
    printf("no %s: Python cross-check skipped\n", PYTHON);
    return;
  }
  struct eellm_st_tensor tensors[N_SPECS];
  make_tensors(tensors);
  const char *meta[] = {"format", "pt", "note", "h\xc3\xa9llo"};
  const char *from_c = in_dir("from_c.safetensors");
  eellm_st_write(from_c, tensors, N_SPECS, meta, 2, err, sizeof err);
  free_tensors(tensors, N_SPECS);
  int rc = run_python("check", from_c, "{\"format\": \"pt\", \"note\": \"h\xc3\xa9llo\"}");
  if (rc == 77) {
    printf("numpy missing: Python cross-check skipped\n");
    return;
  }
  tu_ok(rc == 0, "Python (json + struct + numpy) reads our file: names, shapes, values, padding, "
        "CRC32C checksums");

  const char *from_python = in_dir("from_python.safetensors");
  rc = run_python("write", from_python, "{\"format\": \"pt\"}");
  tu_ok(rc == 0, "Python writes a file in the safetensors layout");
  struct eellm_st_file *f = eellm_st_open(from_python, err, sizeof err);
  if (!f) printf("open: %s\n", err);
  check_all_specs(f, "file written by Python");
  tu_ok(f && eellm_st_meta(f, "format") && strcmp(eellm_st_meta(f, "format"), "pt") == 0 &&
            strcmp(eellm_st_at(f, 0)->name, "layer.0.b") == 0,
        "Python file's metadata and offset order (largest dtype, then name, first)");
  eellm_st_close(f);
}

int main(void) {
  tu_start();
  starpu_pause(); /* no tasks here: keep idle workers from spinning on the cores */
  dir = tu_tempdir();
  test_dtypes();
  test_round_trip();
  test_header_padding();
  test_bad_write_arguments();
  test_validation();
  test_lenient_inputs();
  test_fuzz();
  test_atomic_write();
  test_checksums();
  test_stale_temps();
  test_base64();
  test_python();
  chmod(in_dir("readonly"), 0755); /* so that tu_finish can remove it */
  starpu_resume();
  return tu_finish();
}
