/* Model checkpoints as safetensors: every parameter as F32 under its GPT-2 /
 * Hugging Face name, the binary model spec base64 in __metadata__["spec"].
 * Written atomically by the safetensors writer; read back only when every
 * tensor's name, dtype and shape matches the model's spec. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/model.h"
#include "runtime/base64.h"
#include "runtime/safetensors.h"

static void tensor_entry(eellm_model *m, size_t i, struct eellm_st_tensor *out) {
  const struct eellm_tensor *t = &m->tensors[i];
  memset(out, 0, sizeof *out);
  out->name = t->name;
  out->dtype = EELLM_F32;
  out->ndim = t->rows ? 2 : 1;
  out->shape[0] = t->rows ? (int64_t)t->rows : (int64_t)t->cols;
  out->shape[1] = (int64_t)t->cols;
  out->data = m->params + t->offset;
  out->nbytes = t->numel * sizeof(float);
}

static char *packed_spec_base64(const Eellm__Model *spec) {
  size_t len = protobuf_c_message_get_packed_size(&spec->base);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf) return NULL;
  protobuf_c_message_pack(&spec->base, buf);
  char *text = eellm_base64_encode(buf, len);
  free(buf);
  return text;
}

int eellm_model_save(eellm_model *m, const char *path, char *err, size_t errlen) {
  eellm_model_sync(m);
  struct eellm_st_tensor *entries = calloc(m->n_tensors, sizeof *entries);
  char *spec = packed_spec_base64(m->spec);
  int ret = -1;
  if (!entries || !spec) {
    snprintf(err, errlen, "%s: out of memory writing the checkpoint", path);
  } else {
    for (size_t i = 0; i < m->n_tensors; i++) tensor_entry(m, i, &entries[i]);
    const char *meta[] = {"format", "eellm", "spec", spec};
    ret = eellm_st_write(path, entries, m->n_tensors, meta, 2, err, errlen);
  }
  free(entries);
  free(spec);
  return ret;
}

static int shape_matches(const struct eellm_st_tensor *found, const struct eellm_st_tensor *want) {
  if (found->dtype != want->dtype || found->ndim != want->ndim) return 0;
  for (int d = 0; d < want->ndim; d++)
    if (found->shape[d] != want->shape[d]) return 0;
  return 1;
}

static void format_shape(const struct eellm_st_tensor *t, char *buf, size_t n) {
  size_t used = snprintf(buf, n, "%s [", eellm_dtype_name(t->dtype));
  for (int d = 0; d < t->ndim && used < n; d++)
    used += snprintf(buf + used, n - used, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
  if (used < n) snprintf(buf + used, n - used, "]");
}

/* Every tensor of the model present with the right dtype and shape, and no other. */
static int check_tensors(eellm_model *m, const struct eellm_st_file *f, const char *path,
                         char *err, size_t errlen) {
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_st_tensor want;
    tensor_entry(m, i, &want);
    const struct eellm_st_tensor *found = eellm_st_find(f, want.name);
    if (!found) {
      snprintf(err, errlen, "%s: tensor '%s' missing", path, want.name);
      return -1;
    }
    if (!shape_matches(found, &want)) {
      char a[64], b[64];
      format_shape(&want, a, sizeof a);
      format_shape(found, b, sizeof b);
      snprintf(err, errlen, "%s: tensor '%s': expected %s, found %s", path, want.name, a, b);
      return -1;
    }
  }
  for (size_t i = 0; i < eellm_st_count(f); i++) {
    const char *name = eellm_st_at(f, i)->name;
    if (eellm_model_find(m, name) < 0) {
      snprintf(err, errlen, "%s: tensor '%s' is not in the model's spec", path, name);
      return -1;
    }
  }
  return 0;
}

int eellm_model_load(eellm_model *m, const char *path, char *err, size_t errlen) {
  struct eellm_st_file *f = eellm_st_open(path, err, errlen);
  if (!f) return -1;
  int ret = check_tensors(m, f, path, err, errlen);
  if (ret == 0) {
    starpu_task_wait_for_all();
    for (size_t i = 0; i < m->n_tensors; i++) {
      const struct eellm_tensor *t = &m->tensors[i];
      starpu_data_acquire(t->param, STARPU_W);
      memcpy(m->params + t->offset, eellm_st_find(f, t->name)->data, t->numel * sizeof(float));
      starpu_data_release(t->param);
    }
  }
  eellm_st_close(f);
  return ret;
}
