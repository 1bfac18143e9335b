/* Stored specs: the base64 binary spec in a checkpoint's
 * __metadata__["spec"], read by eellm_checkpoint_spec (runtime/io/checkpoint.c,
 * runtime/io/base64.c).
 *
 * The first byte picks what the rest is: 'b' the packed spec (the target
 * base64-encodes it), anything else the metadata text itself. The target
 * writes a one-tensor safetensors file holding it in memory and reads it back.
 *
 * Oracles: the checkpoint's spec is accepted exactly when strict base64
 * decoding, unpacking and eellm_model_spec_check all accept it, and then equals
 * the unpacked message and survives packing and unpacking (as eellm_model_create
 * copies it); accepted text is canonical base64 (it re-encodes to itself);
 * base64 round trips any bytes; a refusal is one line. */
#include "fuzz_spec.h"

#include <jansson.h>

#include "eellm.h"
#include "runtime/io/base64.h"

/* A safetensors file: one U8 tensor "w" of one byte and the spec metadata. */
static uint8_t *checkpoint_bytes(const char *spec_text, size_t *size) {
  json_t *header = json_pack("{s:{s:s}, s:{s:s, s:[i], s:[i, i]}}", "__metadata__", "spec",
                             spec_text, "w", "dtype", "U8", "shape", 1, "data_offsets", 0, 1);
  if (!header) return NULL; /* not UTF-8: a checkpoint cannot hold it */
  char *json = json_dumps(header, JSON_COMPACT);
  json_decref(header);
  size_t n = strlen(json), padded = (n + 7) / 8 * 8;
  uint8_t *file = malloc(8 + padded + 1);
  for (int k = 0; k < 8; k++) file[k] = (uint8_t)((uint64_t)padded >> (8 * k));
  memcpy(file + 8, json, n);
  memset(file + 8 + n, ' ', padded - n);
  file[8 + padded] = 7; /* the tensor's byte */
  free(json);
  *size = 8 + padded + 1;
  return file;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  /* base64 round trips any bytes. */
  char *encoded = eellm_base64_encode(data + 1, size - 1);
  FUZZ_CHECK(encoded && strlen(encoded) == (size - 1 + 2) / 3 * 4, "encoded length");
  size_t n;
  unsigned char *decoded = eellm_base64_decode(encoded, &n);
  FUZZ_CHECK(decoded && n == size - 1 && memcmp(decoded, data + 1, n) == 0,
             "base64 does not round trip %zu bytes", size - 1);
  free(decoded);

  char *text;
  if (data[0] == 'b') {
    text = encoded;
  } else {
    free(encoded);
    text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    if (strlen(text) != size - 1) { /* a NUL: JSON strings here cannot hold one */
      free(text);
      return 0;
    }
  }

  /* What the checkpoint reader should conclude. */
  Eellm__Model *want = NULL;
  unsigned char *packed = eellm_base64_decode(text, &n);
  char err[512] = "";
  if (packed) {
    char *again = eellm_base64_encode(packed, n);
    FUZZ_CHECK(again && strcmp(again, text) == 0, "accepted base64 is not canonical: '%s'", text);
    free(again);
    want = (Eellm__Model *)eellm_spec_unpack(&eellm__model__descriptor, n, packed);
    if (want && eellm_model_spec_check(want, "x", err, sizeof err) != 0) {
      eellm_model_spec_free(want);
      want = NULL;
    }
    free(packed);
  }

  size_t file_size;
  uint8_t *file = checkpoint_bytes(text, &file_size);
  free(text);
  if (!file) {
    eellm_model_spec_free(want);
    return 0;
  }
  const char *path = fuzz_memfile(file, file_size);
  free(file);
  if (!path) abort();
  Eellm__Model *got = eellm_checkpoint_spec(path, err, sizeof err);
  FUZZ_CHECK((got != NULL) == (want != NULL), "the checkpoint's spec is %s, expected %s: %s",
             got ? "accepted" : "refused", want ? "accepted" : "refused", got ? "" : err);
  if (got) {
    FUZZ_CHECK(fuzz_pack_equal(&got->base, &want->base), "stored spec differs");
    /* eellm_model_create copies the spec by packing and unpacking it. */
    protobuf_c_message_free_unpacked(fuzz_binary_round_trip(&got->base), NULL);
    FUZZ_CHECK(eellm_model_spec_check(got, "x", err, sizeof err) == 0, "check: %s", err);
  } else {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "error not one line: '%s'", err);
  }
  eellm_model_spec_free(got);
  eellm_model_spec_free(want);
  return 0;
}
