/* safetensors checkpoints: an 8-byte little-endian header length N, N bytes of
 * JSON header (space-padded to a multiple of 8) mapping each tensor name to
 * {"dtype", "shape", "data_offsets": [begin, end]} plus an optional
 * "__metadata__" object of strings, then the raw little-endian tensor data,
 * contiguous and in offset order. */
#ifndef EELLM_SAFETENSORS_H
#define EELLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

enum eellm_dtype { EELLM_F32, EELLM_F64, EELLM_I32, EELLM_I64, EELLM_U16, EELLM_U8 };

#define EELLM_ST_MAX_NDIM 8

struct eellm_st_tensor {
  const char *name;
  enum eellm_dtype dtype;
  int ndim; /* 0 for a scalar */
  int64_t shape[EELLM_ST_MAX_NDIM];
  const void *data; /* from eellm_st_open: aligned for dtype */
  size_t nbytes;    /* product(shape) * eellm_dtype_size(dtype) */
};

/* Writes tensors (in the given order) and metadata pairs (meta[2i] key, meta[2i+1]
 * value; n_meta pairs) atomically: a temp file in the same directory, fwrite,
 * fflush, fsync, rename, then fsync the directory. On any failure the temp file
 * is removed, an existing file at path is untouched, and -1 is returned with a
 * one-line error naming the path in err. Returns 0 on success. Every tensor's
 * CRC32C goes into the metadata as "crc32c.<name>": 8 lowercase hex digits
 * (keys of that form are reserved). Temporary files of dead processes left
 * next to path (a kill mid-write) are removed first. */
int eellm_st_write(const char *path, const struct eellm_st_tensor *tensors, size_t n,
                   const char *const *meta, size_t n_meta, char *err, size_t errlen);

/* A whole file read into memory with its validated index. */
struct eellm_st_file;

/* Reads and validates path; NULL with a one-line error naming the file if it is
 * not a well-formed safetensors file of known dtypes, or if a tensor's data does
 * not match its "crc32c.<name>" checksum ("PATH: tensor 'NAME' fails its
 * checksum (file damaged; ...)"). Tensors without a checksum (older files,
 * other writers) load unchecked; EELLM_NO_CHECKSUM=1 skips the check. */
struct eellm_st_file *eellm_st_open(const char *path, char *err, size_t errlen);
size_t eellm_st_count(const struct eellm_st_file *f);
/* The i-th tensor in data offset order; NULL if i >= count. */
const struct eellm_st_tensor *eellm_st_at(const struct eellm_st_file *f, size_t i);
/* NULL if there is no tensor of that name. */
const struct eellm_st_tensor *eellm_st_find(const struct eellm_st_file *f, const char *name);
/* The __metadata__ value of key; NULL if absent. */
const char *eellm_st_meta(const struct eellm_st_file *f, const char *key);
/* The __metadata__ keys, in the file's order, into keys (NULL: count only);
 * returns how many. The strings belong to f. */
size_t eellm_st_meta_keys(const struct eellm_st_file *f, const char **keys);
/* Frees f and everything it handed out; NULL is allowed. */
void eellm_st_close(struct eellm_st_file *f);

/* "F32", "F64", "I32", "I64", "U16", "U8"; "?" and 0 for a value outside the enum. */
const char *eellm_dtype_name(enum eellm_dtype d);
size_t eellm_dtype_size(enum eellm_dtype d);

#endif
