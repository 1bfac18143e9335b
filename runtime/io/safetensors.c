/* safetensors reader and writer. The JSON header is read and written with
 * jansson; the reader validates everything before handing out a tensor. */
#include "runtime/io/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eellm/outfile.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and this code does not byte-swap"
#endif

/* The reference implementation refuses headers longer than this. */
#define MAX_HEADER_BYTES 100000000u
#define METADATA_KEY "__metadata__"

static const struct {
  const char *name;
  size_t size;
} dtypes[] = {
    [EELLM_F32] = {"F32", 4}, [EELLM_F64] = {"F64", 8}, [EELLM_I32] = {"I32", 4},
    [EELLM_I64] = {"I64", 8}, [EELLM_U16] = {"U16", 2}, [EELLM_U8] = {"U8", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *eellm_dtype_name(enum eellm_dtype d) {
  return (unsigned)d < N_DTYPES ? dtypes[d].name : "?";
}

size_t eellm_dtype_size(enum eellm_dtype d) { return (unsigned)d < N_DTYPES ? dtypes[d].size : 0; }

static int dtype_from_name(const char *name, enum eellm_dtype *d) {
  for (unsigned i = 0; i < N_DTYPES; i++) {
    if (strcmp(name, dtypes[i].name) == 0) {
      *d = (enum eellm_dtype)i;
      return 1;
    }
  }
  return 0;
}

/* Writes "path: message" into err as one line: control characters (from tensor
 * names, say) become '?'. */
static void set_error(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_error(char *err, size_t errlen, const char *path, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  int prefix = snprintf(err, errlen, "%s: ", path);
  if (prefix >= 0 && (size_t)prefix < errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + prefix, errlen - (size_t)prefix, fmt, ap);
    va_end(ap);
  }
  for (char *c = err; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

/* product(shape) * dtype size; 0 if it does not fit in an int64 (JSON offsets are int64). */
static int shape_bytes(enum eellm_dtype d, int ndim, const int64_t *shape, uint64_t *bytes) {
  uint64_t total = eellm_dtype_size(d);
  for (int i = 0; i < ndim; i++)
    if (__builtin_mul_overflow(total, (uint64_t)shape[i], &total)) return 0;
  *bytes = total;
  return total <= INT64_MAX;
}

/* "[2, 3]" for messages; "[]" for a scalar. */
static const char *format_shape(char *buf, size_t len, int ndim, const int64_t *shape) {
  size_t used = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < ndim && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, "%s%" PRId64, i ? ", " : "", shape[i]);
  if (used < len) snprintf(buf + used, len - used, "]");
  return buf;
}

/* ---- checksums ------------------------------------------------------------ */

/* CRC32C (Castagnoli, reflected polynomial 0x82f63b78), as iSCSI and ext4 use
 * it: SSE4.2's crc32 instruction where the CPU has it, else a table. */
static uint32_t crc_table[256];

static void crc_init_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32c_table(uint32_t crc, const unsigned char *p, size_t n) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, crc_init_table);
  for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc,
                                                               const unsigned char *p, size_t n) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    memcpy(&word, p, 8);
    c = __builtin_ia32_crc32di(c, word);
  }
  crc = (uint32_t)c;
  for (; n > 0; n--, p++) crc = __builtin_ia32_crc32qi(crc, *p);
  return crc;
}
#endif

static uint32_t crc32c(const void *data, size_t n) {
  uint32_t crc = 0xffffffffu;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return ~crc32c_sse42(crc, data, n);
#endif
  return ~crc32c_table(crc, data, n);
}

/* The metadata key of a tensor's checksum: "crc32c.<name>", value 8 lowercase hex digits. */
#define CHECKSUM_PREFIX "crc32c."

static char *checksum_key(const char *name) {
  size_t n = strlen(CHECKSUM_PREFIX) + strlen(name) + 1;
  char *key = malloc(n);
  if (key) snprintf(key, n, CHECKSUM_PREFIX "%s", name);
  return key;
}

static int checksums_wanted(void) {
  const char *off = getenv("EELLM_NO_CHECKSUM");
  return !off || !*off || strcmp(off, "0") == 0;
}

/* ---- writer ------------------------------------------------------------- */

static int check_tensor_arg(const char *path, size_t i, const struct eellm_st_tensor *t, char *err,
                            size_t errlen) {
  char shape[256];
  uint64_t bytes;
  if (!t->name) {
    set_error(err, errlen, path, "tensor %zu has no name", i);
    return -1;
  }
  if (strcmp(t->name, METADATA_KEY) == 0) {
    set_error(err, errlen, path, "'" METADATA_KEY "' cannot name a tensor");
    return -1;
  }
  if ((unsigned)t->dtype >= N_DTYPES || t->ndim < 0 || t->ndim > EELLM_ST_MAX_NDIM) {
    set_error(err, errlen, path, "tensor '%s': invalid dtype %d or ndim %d", t->name, (int)t->dtype,
              t->ndim);
    return -1;
  }
  for (int d = 0; d < t->ndim; d++) {
    if (t->shape[d] < 0) {
      set_error(err, errlen, path, "tensor '%s': negative dimension in shape %s", t->name,
                format_shape(shape, sizeof shape, t->ndim, t->shape));
      return -1;
    }
  }
  if (!shape_bytes(t->dtype, t->ndim, t->shape, &bytes) || bytes != t->nbytes) {
    set_error(err, errlen, path, "tensor '%s': nbytes %zu do not match dtype %s and shape %s",
              t->name, t->nbytes, eellm_dtype_name(t->dtype),
              format_shape(shape, sizeof shape, t->ndim, t->shape));
    return -1;
  }
  if (t->nbytes > 0 && !t->data) {
    set_error(err, errlen, path, "tensor '%s' has no data", t->name);
    return -1;
  }
  return 0;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [begin, begin + nbytes]}; NULL if out of
 * memory. */
static json_t *tensor_entry(const struct eellm_st_tensor *t, uint64_t begin) {
  json_t *shape = json_array();
  for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
  if (json_array_size(shape) != (size_t)t->ndim) {
    json_decref(shape);
    return NULL;
  }
  return json_pack("{s:s, s:o, s:[I, I]}", "dtype", eellm_dtype_name(t->dtype), "shape", shape,
                   "data_offsets", (json_int_t)begin, (json_int_t)(begin + t->nbytes));
}

static int add_metadata(const char *path, json_t *header, const char *const *meta, size_t n_meta,
                        char *err, size_t errlen) {
  json_t *metadata = json_object();
  if (json_object_set_new(header, METADATA_KEY, metadata) != 0) {
    set_error(err, errlen, path, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < n_meta; i++) {
    const char *key = meta[2 * i], *value = meta[2 * i + 1];
    if (!key || !value) {
      set_error(err, errlen, path, "metadata pair %zu has a NULL key or value", i);
      return -1;
    }
    if (json_object_get(metadata, key)) {
      set_error(err, errlen, path, "metadata key '%s' given twice", key);
      return -1;
    }
    if (json_object_set_new(metadata, key, json_string(value)) != 0) {
      set_error(err, errlen, path, "metadata '%s' is not valid UTF-8", key);
      return -1;
    }
  }
  return 0;
}

/* One "crc32c.<name>" metadata entry per tensor (after the caller's pairs). */
static int add_checksums(const char *path, json_t *header, const struct eellm_st_tensor *tensors,
                         size_t n, char *err, size_t errlen) {
  json_t *metadata = json_object_get(header, METADATA_KEY);
  for (size_t i = 0; i < n; i++) {
    char *key = checksum_key(tensors[i].name), hex[16];
    snprintf(hex, sizeof hex, "%08x", crc32c(tensors[i].data, tensors[i].nbytes));
    if (!key || json_object_get(metadata, key) ||
        json_object_set_new(metadata, key, json_string(hex)) != 0) {
      if (key && json_object_get(metadata, key))
        set_error(err, errlen, path, "metadata key '%s' is reserved for a checksum", key);
      else
        set_error(err, errlen, path, "out of memory");
      free(key);
      return -1;
    }
    free(key);
  }
  return 0;
}

/* The header object: __metadata__ first (if any pairs or tensors), then the tensors in the
 * given order with contiguous data offsets. NULL with err set on bad arguments. */
static json_t *build_header(const char *path, const struct eellm_st_tensor *tensors, size_t n,
                            const char *const *meta, size_t n_meta, char *err, size_t errlen) {
  json_t *header = json_object();
  if (!header) {
    set_error(err, errlen, path, "out of memory");
    return NULL;
  }
  /* Tensors bring their checksums into __metadata__ (first in the header). */
  if ((n_meta > 0 || n > 0) && add_metadata(path, header, meta, n_meta, err, errlen) != 0)
    goto fail;
  uint64_t offset = 0;
  for (size_t i = 0; i < n; i++) {
    const struct eellm_st_tensor *t = &tensors[i];
    if (check_tensor_arg(path, i, t, err, errlen) != 0) goto fail;
    if (json_object_get(header, t->name)) {
      set_error(err, errlen, path, "tensor '%s' given twice", t->name);
      goto fail;
    }
    if (__builtin_add_overflow(offset, t->nbytes, &offset) || offset > INT64_MAX) {
      set_error(err, errlen, path, "tensors add up to more than 2^63 bytes");
      goto fail;
    }
    json_t *entry = tensor_entry(t, offset - t->nbytes);
    if (!entry) {
      set_error(err, errlen, path, "out of memory");
      goto fail;
    }
    if (json_object_set_new(header, t->name, entry) != 0) {
      set_error(err, errlen, path, "tensor name '%s' is not valid UTF-8", t->name);
      goto fail;
    }
  }
  if (n > 0 && add_checksums(path, header, tensors, n, err, errlen) != 0) goto fail;
  return header;
fail:
  json_decref(header);
  return NULL;
}

/* The header as written: compact JSON padded with spaces to a multiple of 8 bytes. */
static char *serialize_header(const json_t *header, size_t *len) {
  char *json = json_dumps(header, JSON_COMPACT);
  if (!json) return NULL;
  size_t json_len = strlen(json);
  *len = (json_len + 7) / 8 * 8;
  char *padded = malloc(*len);
  if (padded) {
    memcpy(padded, json, json_len);
    memset(padded + json_len, ' ', *len - json_len);
  }
  free(json);
  return padded;
}

static int write_all(FILE *fp, const void *bytes, size_t n) {
  return n == 0 || fwrite(bytes, 1, n, fp) == n;
}

/* Fault tests: EELLM_FAULT_KILL_IN_WRITE=K makes this process's K-th write
 * kill the process (SIGKILL) half-way through its data, the temporary file
 * flushed, as a kill at the worst moment would. */
static int kill_in_this_write(void) {
  static int writes;
  const char *k = getenv("EELLM_FAULT_KILL_IN_WRITE");
  return k && *k && ++writes == atoi(k);
}

/* Writes the length, header and data through an atomic output file; a failed
 * write stops the loop and makes commit fail with its cause. */
static int write_atomically(const char *path, const char *header, size_t header_len,
                            const struct eellm_st_tensor *tensors, size_t n, char *err,
                            size_t errlen) {
  struct eellm_outfile out;
  if (eellm_outfile_open(&out, path, err, errlen) != 0) return -1;
  unsigned char len_le[8];
  for (int k = 0; k < 8; k++) len_le[k] = (unsigned char)((uint64_t)header_len >> (8 * k));
  int ok = write_all(out.fp, len_le, sizeof len_le) && write_all(out.fp, header, header_len);
  int kill_at = kill_in_this_write() ? (int)(n / 2) : -1;
  for (size_t i = 0; ok && i < n; i++) {
    if ((int)i == kill_at && fflush(out.fp) == 0) raise(SIGKILL);
    ok = write_all(out.fp, tensors[i].data, tensors[i].nbytes);
  }
  return eellm_outfile_commit(&out, err, errlen);
}

int eellm_st_write(const char *path, const struct eellm_st_tensor *tensors, size_t n,
                   const char *const *meta, size_t n_meta, char *err, size_t errlen) {
  if (!path || (n > 0 && !tensors) || (n_meta > 0 && !meta)) {
    set_error(err, errlen, path ? path : "(null)", "NULL path, tensors or metadata");
    return -1;
  }
  json_t *header = build_header(path, tensors, n, meta, n_meta, err, errlen);
  if (!header) return -1;
  size_t header_len;
  char *header_bytes = serialize_header(header, &header_len);
  json_decref(header);
  if (!header_bytes) {
    set_error(err, errlen, path, "out of memory");
    return -1;
  }
  int rc = write_atomically(path, header_bytes, header_len, tensors, n, err, errlen);
  free(header_bytes);
  return rc;
}

/* ---- reader ------------------------------------------------------------- */

struct entry {
  struct eellm_st_tensor t;
  uint64_t begin, end;
  void *aligned_copy; /* when the data's offset is misaligned for its dtype */
};

struct eellm_st_file {
  json_t *header;         /* owns the tensor names and metadata strings */
  const json_t *metadata; /* NULL if the header has none */
  unsigned char *data;    /* the data section */
  size_t count;
  struct entry *entries; /* in data offset order */
};

/* Reads the file's header bytes and data section (into separate, malloc-aligned
 * buffers); 0 or -1 with err set. */
static int read_sections(const char *path, char **header, uint64_t *header_len,
                         unsigned char **data, uint64_t *data_len, char *err, size_t errlen) {
  FILE *fp = fopen(path, "rb");
  struct stat st;
  unsigned char len_le[8];
  int rc = -1;
  if (!fp) {
    set_error(err, errlen, path, "cannot open: %s", strerror(errno));
    return -1;
  }
  if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
    set_error(err, errlen, path, "not a regular file");
    goto done;
  }
  uint64_t size = (uint64_t)st.st_size;
  if (size < 8) {
    set_error(err, errlen, path, "file is %" PRIu64 " bytes, shorter than the 8-byte header length",
              size);
    goto done;
  }
  if (fread(len_le, 1, 8, fp) != 8) goto short_read;
  *header_len = 0;
  for (int k = 0; k < 8; k++) *header_len |= (uint64_t)len_le[k] << (8 * k);
  if (*header_len > MAX_HEADER_BYTES || *header_len > size - 8) {
    set_error(err, errlen, path,
              "header length %" PRIu64 " is absurd for a file of %" PRIu64 " bytes", *header_len,
              size);
    goto done;
  }
  *data_len = size - 8 - *header_len;
  *header = malloc(*header_len ? *header_len : 1);
  *data = malloc(*data_len ? *data_len : 1);
  if (!*header || !*data) {
    set_error(err, errlen, path, "out of memory reading %" PRIu64 " bytes", size);
    goto done;
  }
  if (fread(*header, 1, *header_len, fp) != *header_len ||
      fread(*data, 1, *data_len, fp) != *data_len)
    goto short_read;
  rc = 0;
  goto done;
short_read:
  set_error(err, errlen, path, "read failed: %s", ferror(fp) ? strerror(errno) : "file shrank");
done:
  fclose(fp);
  return rc;
}

static int parse_shape(const char *path, const char *name, const json_t *shape,
                       struct eellm_st_tensor *t, char *err, size_t errlen) {
  if (!json_is_array(shape) || json_array_size(shape) > EELLM_ST_MAX_NDIM) {
    set_error(err, errlen, path,
              "tensor '%s': shape is missing, not an array or over %d dimensions", name,
              EELLM_ST_MAX_NDIM);
    return -1;
  }
  t->ndim = (int)json_array_size(shape);
  for (int d = 0; d < t->ndim; d++) {
    const json_t *dim = json_array_get(shape, (size_t)d);
    if (!json_is_integer(dim) || json_integer_value(dim) < 0) {
      set_error(err, errlen, path, "tensor '%s': shape has a negative or non-integer dimension",
                name);
      return -1;
    }
    t->shape[d] = json_integer_value(dim);
  }
  return 0;
}

static int parse_offsets(const char *path, const char *name, const json_t *offsets, struct entry *e,
                         char *err, size_t errlen) {
  const json_t *begin = json_array_get(offsets, 0), *end = json_array_get(offsets, 1);
  if (!json_is_array(offsets) || json_array_size(offsets) != 2 || !json_is_integer(begin) ||
      !json_is_integer(end) || json_integer_value(begin) < 0 ||
      json_integer_value(end) < json_integer_value(begin)) {
    set_error(err, errlen, path,
              "tensor '%s': data_offsets is missing or not [begin, end] with 0 <= begin <= end",
              name);
    return -1;
  }
  e->begin = (uint64_t)json_integer_value(begin);
  e->end = (uint64_t)json_integer_value(end);
  return 0;
}

/* Fills e from one header entry, checking it against the data section's length. */
static int parse_entry(const char *path, const char *name, const json_t *value, uint64_t data_len,
                       struct entry *e, char *err, size_t errlen) {
  const json_t *dtype = json_object_get(value, "dtype");
  char shape[256];
  uint64_t bytes;
  e->t.name = name;
  if (!json_is_object(value)) {
    set_error(err, errlen, path, "tensor '%s': entry is not an object", name);
    return -1;
  }
  if (!json_is_string(dtype)) {
    set_error(err, errlen, path, "tensor '%s': dtype is missing or not a string", name);
    return -1;
  }
  if (!dtype_from_name(json_string_value(dtype), &e->t.dtype)) {
    set_error(err, errlen, path, "tensor '%s': unknown dtype '%s'", name, json_string_value(dtype));
    return -1;
  }
  if (parse_shape(path, name, json_object_get(value, "shape"), &e->t, err, errlen) != 0 ||
      parse_offsets(path, name, json_object_get(value, "data_offsets"), e, err, errlen) != 0)
    return -1;
  format_shape(shape, sizeof shape, e->t.ndim, e->t.shape);
  if (!shape_bytes(e->t.dtype, e->t.ndim, e->t.shape, &bytes)) {
    set_error(err, errlen, path, "tensor '%s': shape %s is too large", name, shape);
    return -1;
  }
  if (e->end - e->begin != bytes) {
    set_error(err, errlen, path,
              "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
              "] do not match dtype %s and shape %s (%" PRIu64 " bytes)",
              name, e->begin, e->end, eellm_dtype_name(e->t.dtype), shape, bytes);
    return -1;
  }
  if (e->end > data_len) {
    set_error(err, errlen, path,
              "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
              "] run past the data section (%" PRIu64 " bytes): truncated file?",
              name, e->begin, e->end, data_len);
    return -1;
  }
  e->t.nbytes = (size_t)bytes;
  return 0;
}

static int check_metadata(const char *path, const json_t *metadata, char *err, size_t errlen) {
  const char *key;
  const json_t *value;
  if (!json_is_object(metadata)) {
    set_error(err, errlen, path, METADATA_KEY " is not an object");
    return -1;
  }
  json_object_foreach((json_t *)metadata, key, value) {
    if (!json_is_string(value)) {
      set_error(err, errlen, path, METADATA_KEY " value of '%s' is not a string", key);
      return -1;
    }
  }
  return 0;
}

static int by_offset(const void *a, const void *b) {
  const struct entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return strcmp(x->t.name, y->t.name);
}

/* Sorted entries must tile the data section exactly: no gap, no overlap, no trailing bytes. */
static int check_layout(const char *path, const struct entry *entries, size_t count,
                        uint64_t data_len, char *err, size_t errlen) {
  uint64_t covered = 0;
  for (size_t i = 0; i < count; i++) {
    if (entries[i].begin < covered) {
      set_error(err, errlen, path, "tensor '%s' overlaps tensor '%s'", entries[i].t.name,
                entries[i - 1].t.name);
      return -1;
    }
    if (entries[i].begin > covered) {
      set_error(err, errlen, path, "gap of %" PRIu64 " bytes before tensor '%s'",
                entries[i].begin - covered, entries[i].t.name);
      return -1;
    }
    covered = entries[i].end;
  }
  if (covered != data_len) {
    set_error(err, errlen, path, "%" PRIu64 " bytes of trailing data after the last tensor",
              data_len - covered);
    return -1;
  }
  return 0;
}

/* Parses the header into f's sorted entries; 0 or -1 with err set. */
static int index_header(const char *path, struct eellm_st_file *f, const char *header,
                        uint64_t header_len, uint64_t data_len, char *err, size_t errlen) {
  json_error_t jerr;
  f->header = json_loadb(header, header_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!f->header) {
    set_error(err, errlen, path, "header is not valid JSON: %s at byte %d", jerr.text,
              jerr.position);
    return -1;
  }
  if (!json_is_object(f->header)) {
    set_error(err, errlen, path, "header is not a JSON object");
    return -1;
  }
  f->metadata = json_object_get(f->header, METADATA_KEY);
  if (f->metadata && check_metadata(path, f->metadata, err, errlen) != 0) return -1;
  f->entries = calloc(json_object_size(f->header) + 1, sizeof *f->entries);
  if (!f->entries) {
    set_error(err, errlen, path, "out of memory");
    return -1;
  }
  const char *name;
  json_t *value;
  json_object_foreach(f->header, name, value) {
    if (strcmp(name, METADATA_KEY) == 0) continue;
    if (parse_entry(path, name, value, data_len, &f->entries[f->count], err, errlen) != 0)
      return -1;
    f->count++;
  }
  qsort(f->entries, f->count, sizeof *f->entries, by_offset);
  return check_layout(path, f->entries, f->count, data_len, err, errlen);
}

/* Points each tensor at its data, copying those whose offset is misaligned for the dtype. */
static int attach_data(const char *path, struct eellm_st_file *f, char *err, size_t errlen) {
  for (size_t i = 0; i < f->count; i++) {
    struct entry *e = &f->entries[i];
    const unsigned char *bytes = f->data + e->begin;
    if ((uintptr_t)bytes % eellm_dtype_size(e->t.dtype) != 0) {
      e->aligned_copy = malloc(e->t.nbytes);
      if (!e->aligned_copy) {
        set_error(err, errlen, path, "out of memory");
        return -1;
      }
      memcpy(e->aligned_copy, bytes, e->t.nbytes);
      bytes = e->aligned_copy;
    }
    e->t.data = bytes;
  }
  return 0;
}

/* Each tensor with a "crc32c.<name>" entry must match it; tensors without one
 * (files from other writers, or from eellm before checksums) are taken as they are. */
static int verify_checksums(const char *path, const struct eellm_st_file *f, char *err,
                            size_t errlen) {
  if (!f->metadata || !checksums_wanted()) return 0;
  for (size_t i = 0; i < f->count; i++) {
    const struct eellm_st_tensor *t = &f->entries[i].t;
    char *key = checksum_key(t->name);
    if (!key) {
      set_error(err, errlen, path, "out of memory");
      return -1;
    }
    const char *want = json_string_value(json_object_get(f->metadata, key));
    free(key);
    if (!want) continue;
    char *end;
    unsigned long stored = strtoul(want, &end, 16);
    if (strlen(want) != 8 || *end || crc32c(t->data, t->nbytes) != (uint32_t)stored) {
      set_error(err, errlen, path,
                "tensor '%s' fails its checksum (file damaged; EELLM_NO_CHECKSUM=1 skips the "
                "check)",
                t->name);
      return -1;
    }
  }
  return 0;
}

struct eellm_st_file *eellm_st_open(const char *path, char *err, size_t errlen) {
  char *header = NULL;
  uint64_t header_len, data_len;
  struct eellm_st_file *f = calloc(1, sizeof *f);
  if (!f) {
    set_error(err, errlen, path, "out of memory");
    return NULL;
  }
  int rc = read_sections(path, &header, &header_len, &f->data, &data_len, err, errlen);
  rc = rc || index_header(path, f, header, header_len, data_len, err, errlen);
  rc = rc || attach_data(path, f, err, errlen);
  rc = rc || verify_checksums(path, f, err, errlen);
  free(header);
  if (rc) {
    eellm_st_close(f);
    return NULL;
  }
  return f;
}

size_t eellm_st_count(const struct eellm_st_file *f) { return f->count; }

const struct eellm_st_tensor *eellm_st_at(const struct eellm_st_file *f, size_t i) {
  return i < f->count ? &f->entries[i].t : NULL;
}

const struct eellm_st_tensor *eellm_st_find(const struct eellm_st_file *f, const char *name) {
  for (size_t i = 0; name && i < f->count; i++)
    if (strcmp(f->entries[i].t.name, name) == 0) return &f->entries[i].t;
  return NULL;
}

size_t eellm_st_meta_keys(const struct eellm_st_file *f, const char **keys) {
  size_t n = 0;
  const char *key;
  json_t *value;
  if (!f->metadata) return 0;
  json_object_foreach((json_t *)f->metadata, key, value) {
    (void)value;
    if (keys) keys[n] = key;
    n++;
  }
  return n;
}

const char *eellm_st_meta(const struct eellm_st_file *f, const char *key) {
  return f->metadata && key ? json_string_value(json_object_get(f->metadata, key)) : NULL;
}

void eellm_st_close(struct eellm_st_file *f) {
  if (!f) return;
  for (size_t i = 0; f->entries && i < f->count; i++) free(f->entries[i].aligned_copy);
  free(f->entries);
  free(f->data);
  json_decref(f->header);
  free(f);
}
