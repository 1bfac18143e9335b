/* safetensors files (runtime/io/safetensors.c): the 8-byte header length, the
 * JSON header, the tensor table and its layout.
 *
 * Oracles: a file that opens has every tensor's data inside the file's data
 * section, nbytes == product(shape) x dtype size, data aligned for its dtype,
 * tensors in offset order tiling the data section; what the header's JSON says
 * (read again here with jansson) is what the reader hands out; writing the
 * tensors and metadata with eellm_st_write and reading that file gives the same
 * tensors and metadata. A refusal is one line. */
#include "fuzz.h"

#include <jansson.h>

#include "runtime/io/safetensors.h"


static int same_tensor(const struct eellm_st_tensor *a, const struct eellm_st_tensor *b) {
  return strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim &&
         memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape) == 0 &&
         a->nbytes == b->nbytes && (a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *out_path = fuzz_out_path("out.safetensors");
  const char *path = fuzz_memfile(data, size);
  if (!path) return 0;
  char err[512] = "";
  struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
  if (!f) {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "error not one line: '%s'", err);
    return 0;
  }
  /* The file's own header, read independently. */
  FUZZ_CHECK(size >= 8, "opened a %zu-byte file", size);
  uint64_t header_len = 0;
  for (int k = 0; k < 8; k++) header_len |= (uint64_t)data[k] << (8 * k);
  FUZZ_CHECK(header_len <= size - 8, "header length %llu", (unsigned long long)header_len);
  size_t data_len = size - 8 - (size_t)header_len;
  const uint8_t *section = data + 8 + header_len;
  json_t *header = json_loadb((const char *)data + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, NULL);
  FUZZ_CHECK(json_is_object(header), "opened a file whose header is not a JSON object");
  json_t *metadata = json_object_get(header, "__metadata__");
  size_t n = eellm_st_count(f), expected = json_object_size(header) - (metadata != NULL);
  FUZZ_CHECK(n == expected, "%zu tensors, the header has %zu", n, expected);

  uint64_t covered = 0;
  struct eellm_st_tensor *copy = calloc(n + 1, sizeof *copy);
  for (size_t i = 0; i < n; i++) {
    const struct eellm_st_tensor *t = eellm_st_at(f, i);
    FUZZ_CHECK(t && t->name && eellm_st_find(f, t->name), "tensor %zu", i);
    size_t bytes = eellm_dtype_size(t->dtype);
    FUZZ_CHECK(bytes > 0 && t->ndim >= 0 && t->ndim <= EELLM_ST_MAX_NDIM, "dtype %d ndim %d",
               (int)t->dtype, t->ndim);
    for (int d = 0; d < t->ndim; d++) {
      FUZZ_CHECK(t->shape[d] >= 0, "negative dimension");
      FUZZ_CHECK(!__builtin_mul_overflow(bytes, (size_t)t->shape[d], &bytes), "size overflows");
    }
    FUZZ_CHECK(bytes == t->nbytes, "'%s': nbytes %zu, shape x dtype %zu", t->name, t->nbytes, bytes);
    FUZZ_CHECK(t->nbytes <= data_len - covered, "'%s' runs past the data", t->name);
    FUZZ_CHECK((uintptr_t)t->data % eellm_dtype_size(t->dtype) == 0, "'%s' misaligned", t->name);
    /* Its bytes are the file's, at the header's offsets, in offset order. */
    json_t *entry = json_object_get(header, t->name);
    json_int_t begin = json_integer_value(json_array_get(json_object_get(entry, "data_offsets"), 0));
    json_int_t end = json_integer_value(json_array_get(json_object_get(entry, "data_offsets"), 1));
    FUZZ_CHECK(begin >= 0 && (uint64_t)begin == covered && end - begin == (json_int_t)t->nbytes,
               "'%s' at [%lld, %lld), expected at %llu", t->name, (long long)begin, (long long)end,
               (unsigned long long)covered);
    FUZZ_CHECK(t->nbytes == 0 || memcmp(t->data, section + begin, t->nbytes) == 0, "'%s' bytes",
               t->name);
    FUZZ_CHECK(strcmp(eellm_dtype_name(t->dtype),
                      json_string_value(json_object_get(entry, "dtype"))) == 0, "'%s' dtype", t->name);
    FUZZ_CHECK(json_array_size(json_object_get(entry, "shape")) == (size_t)t->ndim, "'%s' ndim",
               t->name);
    covered += t->nbytes;
    copy[i] = *t;
  }
  FUZZ_CHECK(covered == data_len, "tensors cover %llu of %zu data bytes",
             (unsigned long long)covered, data_len);

  /* The metadata as the reader gives it. */
  size_t n_meta = json_object_size(metadata);
  const char **meta = calloc(2 * n_meta + 1, sizeof *meta);
  const char *key;
  json_t *value;
  size_t k = 0;
  json_object_foreach(metadata, key, value) {
    FUZZ_CHECK(json_is_string(value), "metadata '%s' is not a string", key);
    const char *got = eellm_st_meta(f, key);
    FUZZ_CHECK(got && strcmp(got, json_string_value(value)) == 0, "metadata '%s'", key);
    meta[2 * k] = key, meta[2 * k + 1] = got;
    k++;
  }

  /* Written again and read back: the same tensors and metadata. */
  if (eellm_st_write(out_path, copy, n, meta, n_meta, err, sizeof err) == 0) {
    struct eellm_st_file *g = eellm_st_open(out_path, err, sizeof err);
    FUZZ_CHECK(g, "the rewritten file does not open: %s", err);
    FUZZ_CHECK(eellm_st_count(g) == n, "rewritten: %zu tensors, not %zu", eellm_st_count(g), n);
    for (size_t i = 0; i < n; i++) {
      const struct eellm_st_tensor *t = eellm_st_find(g, copy[i].name);
      FUZZ_CHECK(t && same_tensor(t, &copy[i]), "rewritten tensor '%s' differs", copy[i].name);
    }
    for (size_t i = 0; i < n_meta; i++) {
      const char *got = eellm_st_meta(g, meta[2 * i]);
      FUZZ_CHECK(got && strcmp(got, meta[2 * i + 1]) == 0, "rewritten metadata '%s'", meta[2 * i]);
    }
    eellm_st_close(g);
  } else {
    /* Only a name the writer refuses could stop it; the reader took every one. */
    FUZZ_CHECK(0, "what the reader accepts, the writer refuses: %s", err);
  }
  free(meta);
  free(copy);
  json_decref(header);
  eellm_st_close(f);
  return 0;
}
