/* Model checkpoints as safetensors: every parameter as F32 under its GPT-2 /
 * Hugging Face name, the binary model spec base64 in __metadata__["spec"].
 * Written atomically by the safetensors writer; read back only when every
 * tensor's name, dtype and shape matches the model's spec. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/model.h"
#include "runtime/io/base64.h"
#include "runtime/engine/mpi.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/specio.h"
#include "eellm/eval.h"

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
  size_t len;
  uint8_t *buf = eellm_spec_pack(&spec->base, &len);
  if (!buf) return NULL;
  char *text = eellm_base64_encode(buf, len);
  free(buf);
  return text;
}

/* The first non-finite value of n floats: its index, or -1 if all are finite. */
static long first_nonfinite(const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return (long)i;
  return -1;
}

static int check_finite(const char *path, const char *name, const float *x, size_t n,
                        const char *consequence, char *err, size_t errlen) {
  long at = first_nonfinite(x, n);
  if (at < 0) return 0;
  snprintf(err, errlen, "%s: tensor '%s' has a non-finite value (%s) at index %ld%s", path, name,
           isnan(x[at]) ? "NaN" : x[at] > 0 ? "inf" : "-inf", at, consequence);
  return -1;
}

int eellm_model_check_finite(eellm_model *m, const char *path, char *err, size_t errlen) {
  for (size_t i = 0; i < m->n_tensors; i++) {
    const struct eellm_tensor *t = &m->tensors[i];
    if (!eellm_model_owns(m, i)) continue;
    starpu_data_acquire(t->param, STARPU_R);
    int bad = check_finite(path, t->name, eellm_model_part(m, i, EELLM_COPY_PARAM), t->part.numel,
                           "", err, errlen);
    starpu_data_release(t->param);
    if (bad) return -1;
  }
  return 0;
}

/* Weights, and with a training state the AdamW moments as optimizer.m.<name>
 * and optimizer.v.<name>, plus step and seed in the metadata. */
static int write_checkpoint(eellm_model *m, const char *path, const struct eellm_train_state *state,
                            char *err, size_t errlen) {
  size_t per_copy = m->n_tensors, n = state ? 3 * per_copy : per_copy;
  struct eellm_st_tensor *entries = calloc(n, sizeof *entries);
  char (*names)[EELLM_NAME_MAX + 16] = calloc(n, sizeof *names);
  char *spec = packed_spec_base64(m->spec);
  int ret = -1;
  if (!entries || !names || !spec) {
    snprintf(err, errlen, "%s: out of memory writing the checkpoint", path);
    goto out;
  }
  /* A model gone non-finite never replaces the file (the last good checkpoint). */
  for (size_t i = 0; i < per_copy; i++) {
    tensor_entry(m, i, &entries[i]);
    if (check_finite(path, entries[i].name, entries[i].data, m->tensors[i].numel,
                     ": not written, the file there is kept", err, errlen) != 0)
      goto out;
  }
  for (size_t i = 0; i < per_copy; i++) {
    if (!state) continue;
    const struct eellm_tensor *t = &m->tensors[i];
    starpu_data_acquire(t->m, STARPU_R);
    starpu_data_acquire(t->v, STARPU_R);
    for (int copy = 1; copy <= 2; copy++) {
      struct eellm_st_tensor *e = &entries[copy * per_copy + i];
      *e = entries[i];
      snprintf(names[copy * per_copy + i], sizeof names[0], "optimizer.%c.%s",
               copy == 1 ? 'm' : 'v', t->name);
      e->name = names[copy * per_copy + i];
      e->data = (copy == 1 ? m->adam_m : m->adam_v) + t->offset;
    }
  }
  char step[32], seed[32];
  snprintf(step, sizeof step, "%u", state ? state->step : 0);
  snprintf(seed, sizeof seed, "%llu", state ? (unsigned long long)state->seed : 0ull);
  const char *meta[10] = {"format", "eellm", "spec", spec};
  size_t n_meta = 2;
  if (m->tokenizer[0]) {
    meta[2 * n_meta] = "tokenizer";
    meta[2 * n_meta++ + 1] = m->tokenizer;
  }
  if (state) {
    meta[2 * n_meta] = "step";
    meta[2 * n_meta++ + 1] = step;
    meta[2 * n_meta] = "seed";
    meta[2 * n_meta++ + 1] = seed;
  }
  ret = eellm_st_write(path, entries, n, meta, n_meta, err, errlen);
  if (state)
    for (size_t i = 0; i < per_copy; i++) {
      starpu_data_release(m->tensors[i].m);
      starpu_data_release(m->tensors[i].v);
    }
out:
  free(entries);
  free(names);
  free(spec);
  return ret;
}

/* Under MPI every rank calls this; rank 0 gathers every stage's tensors and
 * writes the file, and every rank returns its result. */
int eellm_model_save_checkpoint(eellm_model *m, const char *path,
                                const struct eellm_train_state *state, char *err, size_t errlen) {
  eellm_model_sync(m);
  /* The moments from the replica that updates each tensor (ZeRO-1), or replica 0. */
  for (size_t i = 0; state && i < m->n_tensors; i++) {
    unsigned data = m->tensors[i].updater < 0 ? 0 : (unsigned)m->tensors[i].updater;
    eellm_model_gather_copy(m, i, EELLM_COPY_M, data);
    eellm_model_gather_copy(m, i, EELLM_COPY_V, data);
  }
  int ret = eellm_rank() == 0 ? write_checkpoint(m, path, state, err, errlen) : 0;
  int failed = eellm_mpi_max(ret != 0);
  if (failed && ret == 0) snprintf(err, errlen, "%s: rank 0 could not write the checkpoint", path);
  return failed ? -1 : 0;
}

int eellm_model_save(eellm_model *m, const char *path, char *err, size_t errlen) {
  return eellm_model_save_checkpoint(m, path, NULL, err, errlen);
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

/* The tensor `name` with the dtype and shape of model tensor i, or NULL with err. */
static const struct eellm_st_tensor *expect(eellm_model *m, size_t i, const char *name,
                                            const struct eellm_st_file *f, const char *path,
                                            char *err, size_t errlen) {
  struct eellm_st_tensor want;
  tensor_entry(m, i, &want);
  const struct eellm_st_tensor *found = eellm_st_find(f, name);
  if (!found) {
    snprintf(err, errlen, "%s: tensor '%s' missing", path, name);
    return NULL;
  }
  if (!shape_matches(found, &want)) {
    char a[64], b[64];
    format_shape(&want, a, sizeof a);
    format_shape(found, b, sizeof b);
    snprintf(err, errlen, "%s: tensor '%s': expected %s, found %s", path, name, a, b);
    return NULL;
  }
  return found;
}

/* No tensor that the model lacks (optimizer state aside). */
static int check_extra(eellm_model *m, const struct eellm_st_file *f, const char *path, char *err,
                       size_t errlen) {
  for (size_t i = 0; i < eellm_st_count(f); i++) {
    const char *name = eellm_st_at(f, i)->name;
    const char *base = strncmp(name, "optimizer.", 10) == 0 && strlen(name) > 12 ? name + 12 : name;
    if (eellm_model_find(m, base) < 0) {
      snprintf(err, errlen, "%s: tensor '%s' is not in the model's spec", path, name);
      return -1;
    }
  }
  return 0;
}

static int parse_state(const struct eellm_st_file *f, const char *path,
                       struct eellm_train_state *state, char *err, size_t errlen) {
  const char *step = eellm_st_meta(f, "step"), *seed = eellm_st_meta(f, "seed");
  char *end1 = NULL, *end2 = NULL;
  unsigned long long s = step ? strtoull(step, &end1, 10) : 0;
  unsigned long long sd = seed ? strtoull(seed, &end2, 10) : 0;
  if (!step || !seed || *end1 || *end2 || s == 0 || s > 0xffffffffull) {
    snprintf(err, errlen, "%s: no training state (metadata step and seed); it holds weights only",
             path);
    return -1;
  }
  state->step = (unsigned)s;
  state->seed = sd;
  return 0;
}

int eellm_model_load_checkpoint(eellm_model *m, const char *path, struct eellm_train_state *state,
                                char *err, size_t errlen) {
  struct eellm_st_file *f = eellm_st_open(path, err, errlen);
  if (!f) return -1;
  int ret = check_extra(m, f, path, err, errlen);
  if (ret == 0 && state) ret = parse_state(f, path, state, err, errlen);
  const struct eellm_st_tensor **found = calloc(3 * m->n_tensors, sizeof *found);
  if (!found) ret = -1;
  char name[EELLM_NAME_MAX + 16];
  for (size_t i = 0; ret == 0 && i < m->n_tensors; i++) {
    const char *base = m->tensors[i].name;
    found[i] = expect(m, i, base, f, path, err, errlen);
    for (int copy = 1; state && copy <= 2 && found[i]; copy++) {
      snprintf(name, sizeof name, "optimizer.%c.%s", copy == 1 ? 'm' : 'v', base);
      found[copy * m->n_tensors + i] = expect(m, i, name, f, path, err, errlen);
      if (!found[copy * m->n_tensors + i]) found[i] = NULL;
    }
    if (!found[i]) ret = -1;
  }
  if (ret == 0) {
    eellm_model_set_tokenizer(m, eellm_st_meta(f, "tokenizer"));
    starpu_task_wait_for_all();
    for (size_t i = 0; i < m->n_tensors; i++) {
      if (!eellm_model_owns(m, i)) continue;
      eellm_model_put_part(m, i, EELLM_COPY_PARAM, found[i]->data);
      if (!state || !eellm_model_updates(m, i)) continue;
      eellm_model_put_part(m, i, EELLM_COPY_M, found[m->n_tensors + i]->data);
      eellm_model_put_part(m, i, EELLM_COPY_V, found[2 * m->n_tensors + i]->data);
    }
  }
  free(found);
  eellm_st_close(f);
  return ret;
}

int eellm_model_load(eellm_model *m, const char *path, char *err, size_t errlen) {
  return eellm_model_load_checkpoint(m, path, NULL, err, errlen);
}

Eellm__Model *eellm_checkpoint_spec(const char *path, char *err, size_t errlen) {
  struct eellm_st_file *f = eellm_st_open(path, err, errlen);
  if (!f) return NULL;
  Eellm__Model *spec = NULL;
  const char *text = eellm_st_meta(f, "spec");
  size_t len = 0;
  unsigned char *packed = text ? eellm_base64_decode(text, &len) : NULL;
  if (packed) spec = (Eellm__Model *)eellm_spec_unpack(&eellm__model__descriptor, len, packed);
  if (!spec)
    snprintf(err, errlen, "%s: no valid model spec in __metadata__[\"spec\"]", path);
  else if (eellm_model_spec_check(spec, path, err, errlen) != 0) {
    eellm_model_spec_free(spec);
    spec = NULL;
  }
  free(packed);
  eellm_st_close(f);
  return spec;
}

/* ---- calibrated thresholds (eval.h) ------------------------------------------ */

static const char *threshold_key(enum eellm_exit_rule rule) {
  return rule == EELLM_EXIT_ENTROPY ? "eellm.threshold.entropy" : "eellm.threshold.maxprob";
}

int eellm_checkpoint_set_thresholds(const char *path, unsigned rule_set, const float thresholds[2],
                                    const char *how, char *err, size_t errlen) {
  struct eellm_st_file *f = eellm_st_open(path, err, errlen);
  if (!f) return -1;
  size_t n = eellm_st_count(f), n_keys = eellm_st_meta_keys(f, NULL);
  struct eellm_st_tensor *tensors = calloc(n ? n : 1, sizeof *tensors);
  const char **keys = calloc(n_keys + 1, sizeof *keys);
  const char **meta = calloc(2 * (n_keys + 3), sizeof *meta);
  char values[2][32];
  int ret = -1;
  if (!tensors || !keys || !meta) {
    snprintf(err, errlen, "%s: out of memory rewriting the checkpoint", path);
    goto out;
  }
  for (size_t i = 0; i < n; i++) tensors[i] = *eellm_st_at(f, i);
  eellm_st_meta_keys(f, keys);
  size_t n_meta = 0;
  /* Checksums are recomputed by the writer; our keys are replaced. */
  for (size_t i = 0; i < n_keys; i++) {
    if (strncmp(keys[i], "crc32c.", 7) == 0 || strcmp(keys[i], "eellm.calibration") == 0 ||
        (rule_set & 1u && strcmp(keys[i], threshold_key(EELLM_EXIT_MAXPROB)) == 0) ||
        (rule_set & 2u && strcmp(keys[i], threshold_key(EELLM_EXIT_ENTROPY)) == 0))
      continue;
    meta[2 * n_meta] = keys[i];
    meta[2 * n_meta++ + 1] = eellm_st_meta(f, keys[i]);
  }
  for (int rule = 0; rule < 2; rule++) {
    if (!(rule_set & (1u << rule))) continue;
    if (!(thresholds[rule] > 0 && thresholds[rule] <= 1)) {
      snprintf(err, errlen, "threshold %g outside (0, 1]", (double)thresholds[rule]);
      goto out;
    }
    snprintf(values[rule], sizeof values[rule], "%.9g", (double)thresholds[rule]);
    meta[2 * n_meta] = threshold_key((enum eellm_exit_rule)rule);
    meta[2 * n_meta++ + 1] = values[rule];
  }
  if (how) {
    meta[2 * n_meta] = "eellm.calibration";
    meta[2 * n_meta++ + 1] = how;
  }
  ret = eellm_st_write(path, tensors, n, meta, n_meta, err, errlen);
out:
  free(tensors);
  free(keys);
  free(meta);
  eellm_st_close(f);
  return ret;
}

int eellm_checkpoint_threshold(const char *path, enum eellm_exit_rule rule, float *threshold,
                               char *err, size_t errlen) {
  struct eellm_st_file *f = eellm_st_open(path, err, errlen);
  if (!f) return -1;
  const char *text = eellm_st_meta(f, threshold_key(rule));
  int ret = 0;
  if (text) {
    char *end;
    double v = strtod(text, &end);
    if (!*text || *end || !(v > 0 && v <= 1)) {
      snprintf(err, errlen, "%s: metadata %s is '%s', not a number in (0, 1]", path,
               threshold_key(rule), text);
      ret = -1;
    } else {
      *threshold = (float)v;
      ret = 1;
    }
  }
  eellm_st_close(f);
  return ret;
}

char *eellm_checkpoint_calibration(const char *path) {
  char err[256];
  struct eellm_st_file *f = eellm_st_open(path, err, sizeof err);
  if (!f) return NULL;
  const char *text = eellm_st_meta(f, "eellm.calibration");
  char *copy = text ? strdup(text) : NULL;
  eellm_st_close(f);
  return copy;
}
