/* Loading and validating model and training specs. Every error is one line
 * naming the file, the position of the field when the spec was text, the
 * field and its value. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "eellm.h"
#include "runtime/io/specio.h"
#include "runtime/io/textpb.h"

struct checker {
  const char *file;
  const struct eellm_textpb_locs *locs;
  char *err;
  size_t errlen;
};

/* Writes "FILE:LINE:COL: field 'PATH': MESSAGE" (position only if known) and returns -1. */
static int fail(const struct checker *c, const ProtobufCMessage *msg, const char *field,
                unsigned index, const char *path, const char *fmt, ...) {
  char message[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  const struct eellm_textpb_loc *loc =
      c->locs && msg ? eellm_textpb_where(c->locs, msg, field, index) : NULL;
  if (loc)
    snprintf(c->err, c->errlen, "%s:%d:%d: field '%s': %s", c->file, loc->line, loc->col, path,
             message);
  else
    snprintf(c->err, c->errlen, "%s: field '%s': %s", c->file, path, message);
  return -1;
}

unsigned eellm_model_spec_ffn_size(const Eellm__Model *spec) {
  return spec->ffn_size ? spec->ffn_size : 4 * spec->d_model;
}

/* The checks every field of a type gets, from the descriptors alone: an enum
 * holds one of its values, a float or double is finite; in msg and its
 * sub-messages, repeated fields included, present or not (an absent field
 * holds its default). `prefix` is msg's path ("" for the root). */
static int check_fields(const struct checker *c, const ProtobufCMessage *msg, const char *prefix) {
  const ProtobufCMessageDescriptor *desc = msg->descriptor;
  for (unsigned i = 0; i < desc->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &desc->fields[i];
    size_t size;
    switch (f->type) {
      case PROTOBUF_C_TYPE_ENUM: size = sizeof(int); break;
      case PROTOBUF_C_TYPE_FLOAT: size = sizeof(float); break;
      case PROTOBUF_C_TYPE_DOUBLE: size = sizeof(double); break;
      case PROTOBUF_C_TYPE_MESSAGE: size = sizeof(ProtobufCMessage *); break;
      default: continue;
    }
    size_t count;
    const char *member = eellm_pb_values(msg, f, &count);
    int repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
    for (size_t k = 0; k < count; k++) {
      const char *value = member + k * size;
      char path[256];
      if (repeated)
        snprintf(path, sizeof path, "%s%s[%zu]", prefix, f->name, k);
      else
        snprintf(path, sizeof path, "%s%s", prefix, f->name);
      if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)value;
        char sub_prefix[260];
        snprintf(sub_prefix, sizeof sub_prefix, "%s.", path);
        if (sub && check_fields(c, sub, sub_prefix) != 0) return -1;
      } else if (f->type == PROTOBUF_C_TYPE_ENUM) {
        int e;
        memcpy(&e, value, sizeof e);
        if (!protobuf_c_enum_descriptor_get_value(f->descriptor, e)) {
          char names[256];
          eellm_textpb_enum_names(names, sizeof names, f->descriptor);
          return fail(c, msg, f->name, (unsigned)k, path, "unknown enum value %d (expected %s)", e,
                      names);
        }
      } else {
        double x;
        if (f->type == PROTOBUF_C_TYPE_FLOAT) {
          float v;
          memcpy(&v, value, sizeof v);
          x = v;
        } else {
          memcpy(&x, value, sizeof x);
        }
        if (!isfinite(x))
          return fail(c, msg, f->name, (unsigned)k, path, "value %g is not a finite number", x);
      }
    }
  }
  return 0;
}

static int check_exit(const struct checker *c, const Eellm__Model *m, size_t k,
                      uint32_t *exit_on_layer) {
  const Eellm__Exit *e = m->exits[k];
  const ProtobufCMessage *msg = &e->base;
  char path[64];
#define FIELD(name) (snprintf(path, sizeof path, "exits[%zu]." name, k), path)
  if (!e->has_layer)
    return fail(c, &m->base, "exits", k, FIELD("layer"), "missing (1..%u)", m->n_layers);
  if (e->layer < 1 || e->layer > m->n_layers)
    return fail(c, msg, "layer", 0, FIELD("layer"), "value %u outside 1..%u", e->layer,
                m->n_layers);
  if (e->placement == EELLM__EXIT__PLACEMENT__PRE && e->layer == m->n_layers)
    return fail(c, msg, "placement", 0, FIELD("placement"),
                "PRE exit reads layer %u but there is no layer %u to attach it to", e->layer,
                e->layer + 1);
  /* exit_on_layer[l]: 1 + the first exit on layer l, 0 for none. */
  if (exit_on_layer[e->layer])
    return fail(c, msg, "layer", 0, FIELD("layer"), "value %u: exits[%u] is on that layer too",
                e->layer, exit_on_layer[e->layer] - 1);
  exit_on_layer[e->layer] = (uint32_t)k + 1;
  if (!(e->loss_weight >= 0))
    return fail(c, msg, "loss_weight", 0, FIELD("loss_weight"), "value %g is negative",
                e->loss_weight);
  if (!(e->temperature > 0))
    return fail(c, msg, "temperature", 0, FIELD("temperature"), "value %g must be positive",
                e->temperature);
  if (e->mlp_input != EELLM__EXIT__MLP_INPUT__PRIVATE_NORM &&
      e->structure != EELLM__EXIT__STRUCTURE__MLP) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&eellm__exit__structure__descriptor, e->structure);
    return fail(c, msg, "mlp_input", 0, FIELD("mlp_input"),
                "a non-default mlp_input applies to MLP exits only, this one is %s", v ? v->name : "?");
  }
  if (e->schedule && !(e->schedule->init >= 0))
    return fail(c, &e->schedule->base, "init", 0, FIELD("schedule.init"), "value %g is negative",
                e->schedule->init);
#undef FIELD
  return 0;
}

static int check_exits(const struct checker *c, const Eellm__Model *m) {
  if (m->n_exits == 0) return 0;
  if (m->n_exits > m->n_layers)
    return fail(c, &m->base, "exits", (unsigned)m->n_layers, "exits",
                "%zu exits but at most one per layer and n_layers is %u", m->n_exits,
                m->n_layers);
  uint32_t *exit_on_layer = calloc((size_t)m->n_layers + 1, sizeof *exit_on_layer);
  if (!exit_on_layer)
    return fail(c, NULL, NULL, 0, "exits", "out of memory checking %zu exits", m->n_exits);
  int rc = 0;
  for (size_t k = 0; k < m->n_exits && rc == 0; k++) rc = check_exit(c, m, k, exit_on_layer);
  free(exit_on_layer);
  return rc;
}

static int check_model(const struct checker *c, const Eellm__Model *m) {
  const ProtobufCMessage *msg = &m->base;
  if (m->vocab_size < 1 || m->vocab_size > EELLM_MAX_VOCAB)
    return fail(c, msg, "vocab_size", 0, "vocab_size", "value %u outside 1..%u", m->vocab_size,
                EELLM_MAX_VOCAB);
  if (m->context_length < 1)
    return fail(c, msg, "context_length", 0, "context_length", "value 0 must be positive");
  if (m->context_length > EELLM_MAX_CONTEXT)
    return fail(c, msg, "context_length", 0, "context_length", "value %u outside 1..%u",
                m->context_length, EELLM_MAX_CONTEXT);
  if (m->n_layers < 1)
    return fail(c, msg, "n_layers", 0, "n_layers", "value 0 must be positive");
  if (m->n_layers > EELLM_MAX_LAYERS)
    return fail(c, msg, "n_layers", 0, "n_layers", "value %u outside 1..%u", m->n_layers,
                EELLM_MAX_LAYERS);
  if (m->n_heads < 1) return fail(c, msg, "n_heads", 0, "n_heads", "value 0 must be positive");
  if (m->d_model > EELLM_MAX_D_MODEL)
    return fail(c, msg, "d_model", 0, "d_model", "value %u outside 1..%u", m->d_model,
                EELLM_MAX_D_MODEL);
  if (m->d_model < 1 || m->d_model % m->n_heads != 0)
    return fail(c, msg, "d_model", 0, "d_model", "value %u is not divisible by n_heads %u",
                m->d_model, m->n_heads);
  if (m->ffn_size > EELLM_MAX_FFN_SIZE)
    return fail(c, msg, "ffn_size", 0, "ffn_size", "value %u outside 0..%u", m->ffn_size,
                EELLM_MAX_FFN_SIZE);
  if (m->positions == EELLM__MODEL__POSITIONS__ROPE && (m->d_model / m->n_heads) % 2 != 0)
    return fail(c, msg, "positions", 0, "positions",
                "ROPE needs an even head size, d_model / n_heads is %u",
                m->d_model / m->n_heads);
  if (!(m->norm_eps > 0))
    return fail(c, msg, "norm_eps", 0, "norm_eps", "value %g must be positive", m->norm_eps);
  if (!(m->init_std > 0))
    return fail(c, msg, "init_std", 0, "init_std", "value %g must be positive", m->init_std);
  if (!(m->rope_theta > 0))
    return fail(c, msg, "rope_theta", 0, "rope_theta", "value %g must be positive",
                m->rope_theta);
  if (check_exits(c, m) != 0) return -1;
  if (check_fields(c, msg, "") != 0) return -1;
  /* Every field in range, every enum known: the counts are exact in doubles. */
  struct eellm_model_spec_costs costs;
  eellm_model_spec_costs(m, &costs);
  if (costs.params_total > EELLM_MAX_PARAMS)
    return fail(c, msg, "n_layers", 0, "n_layers",
                "value %u with d_model %u makes %.4g parameters, more than the %.4g (2^40) "
                "eellm holds",
                m->n_layers, m->d_model, costs.params_total, EELLM_MAX_PARAMS);
  return 0;
}
int eellm_model_spec_check(const Eellm__Model *spec, const char *file, char *err,
                           size_t errlen) {
  struct checker c = {file, NULL, err, errlen};
  return check_model(&c, spec);
}

static ProtobufCMessage *load(const char *path, const ProtobufCMessageDescriptor *desc,
                              struct eellm_textpb_locs *locs, char *err, size_t errlen) {
  const ProtobufCMessageDescriptor *declared = eellm_spec_message_of(path);
  if (declared && declared != desc) {
    snprintf(err, errlen, "%s: declares proto-message %s, expected %s", path, declared->name,
             desc->name);
    return NULL;
  }
  return eellm_spec_read(path, desc, locs, err, errlen);
}

Eellm__Model *eellm_model_spec_load(const char *path, char *err, size_t errlen) {
  struct eellm_textpb_locs locs = {0};
  ProtobufCMessage *msg = load(path, &eellm__model__descriptor, &locs, err, errlen);
  if (msg) {
    struct checker c = {path, &locs, err, errlen};
    if (check_model(&c, (Eellm__Model *)msg) != 0) {
      protobuf_c_message_free_unpacked(msg, NULL);
      msg = NULL;
    }
  }
  eellm_textpb_locs_free(&locs);
  return (Eellm__Model *)msg;
}

static int check_parallelism(const struct checker *c, const Eellm__Parallelism *p,
                             const Eellm__Model *model) {
  const ProtobufCMessage *msg = &p->base;
  if (p->pp > EELLM_MAX_STAGES && model->n_layers > EELLM_MAX_STAGES)
    return fail(c, msg, "pp", 0, "parallelism.pp",
                "value %u outside 1..%u (the most pipeline stages eellm runs)", p->pp,
                EELLM_MAX_STAGES);
  if (p->pp < 1 || p->pp > model->n_layers)
    return fail(c, msg, "pp", 0, "parallelism.pp", "value %u outside 1..%u (the model's layers)",
                p->pp, model->n_layers);
  if (p->tp < 1 || model->n_heads % p->tp != 0)
    return fail(c, msg, "tp", 0, "parallelism.tp", "value %u does not divide n_heads %u", p->tp,
                model->n_heads);
  if (eellm_model_spec_ffn_size(model) % p->tp != 0)
    return fail(c, msg, "tp", 0, "parallelism.tp",
                "value %u does not divide the MLP's %u hidden units (ffn_size)", p->tp,
                eellm_model_spec_ffn_size(model));
  if (model->vocab_size < p->tp)
    return fail(c, msg, "tp", 0, "parallelism.tp", "value %u is more than vocab_size %u", p->tp,
                model->vocab_size);
  if (p->dp < 1) return fail(c, msg, "dp", 0, "parallelism.dp", "value 0 must be positive");
  if (p->zero_stage > 1)
    return fail(c, msg, "zero_stage", 0, "parallelism.zero_stage",
                "value %u outside 0..1 (ZeRO stage 1 shards the AdamW moments; no higher stage "
                "is built)",
                p->zero_stage);
  if (p->n_stage_layers == 0) return 0;
  if (p->n_stage_layers != p->pp)
    return fail(c, msg, "stage_layers", 0, "parallelism.stage_layers",
                "gives %zu stages but pp is %u", p->n_stage_layers, p->pp);
  uint64_t total = 0; /* pp <= 1024 terms of 32 bits: no wrap */
  for (size_t s = 0; s < p->n_stage_layers; s++) {
    if (p->stage_layers[s] < 1)
      return fail(c, msg, "stage_layers", s, "parallelism.stage_layers",
                  "stage %zu has no layer", s);
    total += p->stage_layers[s];
  }
  if (total != model->n_layers)
    return fail(c, msg, "stage_layers", 0, "parallelism.stage_layers",
                "sums to %llu layers but the model has %u", (unsigned long long)total,
                model->n_layers);
  return 0;
}

static int check_train(const struct checker *c, const Eellm__Train *t, const Eellm__Model *model) {
  const ProtobufCMessage *msg = &t->base;
  if (t->optimizer) {
    const Eellm__AdamW *o = t->optimizer;
    const ProtobufCMessage *om = &o->base;
    if (!(o->lr >= 0)) return fail(c, om, "lr", 0, "optimizer.lr", "value %g is negative", o->lr);
    if (!(o->beta1 >= 0 && o->beta1 < 1))
      return fail(c, om, "beta1", 0, "optimizer.beta1", "value %g outside [0, 1)", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1))
      return fail(c, om, "beta2", 0, "optimizer.beta2", "value %g outside [0, 1)", o->beta2);
    if (!(o->eps > 0)) return fail(c, om, "eps", 0, "optimizer.eps", "value %g must be positive", o->eps);
    if (!(o->weight_decay >= 0))
      return fail(c, om, "weight_decay", 0, "optimizer.weight_decay", "value %g is negative",
                  o->weight_decay);
    if (!(o->grad_clip >= 0))
      return fail(c, om, "grad_clip", 0, "optimizer.grad_clip", "value %g is negative",
                  o->grad_clip);
  }
  if (t->lr_schedule && !(t->lr_schedule->min_lr >= 0))
    return fail(c, &t->lr_schedule->base, "min_lr", 0, "lr_schedule.min_lr",
                "value %g is negative", t->lr_schedule->min_lr);
  if (t->steps < 1) return fail(c, msg, "steps", 0, "steps", "value 0 must be positive");
  if (t->micro_batches < 1)
    return fail(c, msg, "micro_batches", 0, "micro_batches", "value 0 must be positive");
  if (t->seq_len > model->context_length)
    return fail(c, msg, "seq_len", 0, "seq_len", "value %u exceeds the model's context_length %u",
                t->seq_len, model->context_length);
  unsigned dp = t->parallelism ? t->parallelism->dp : 1;
  uint64_t group = (uint64_t)t->micro_batches * dp; /* 64 bits: no wrap to 0 */
  if (t->global_batch < 1 || dp < 1 || t->global_batch % group != 0)
    return fail(c, msg, "global_batch", 0, "global_batch",
                "value %u is not a multiple of micro_batches %u x dp %u", t->global_batch,
                t->micro_batches, dp);
  uint64_t seq_len = t->seq_len ? t->seq_len : model->context_length;
  uint64_t step_tokens = t->global_batch * seq_len;
  if (step_tokens > EELLM_MAX_STEP_TOKENS)
    return fail(c, msg, "global_batch", 0, "global_batch",
                "value %u x seq_len %llu is %llu tokens a step, more than %u", t->global_batch,
                (unsigned long long)seq_len, (unsigned long long)step_tokens,
                EELLM_MAX_STEP_TOKENS);
  uint64_t eval_tokens = (uint64_t)t->eval_batches * (t->global_batch / t->micro_batches) * seq_len;
  if (eval_tokens > EELLM_MAX_STEP_TOKENS)
    return fail(c, msg, "eval_batches", 0, "eval_batches",
                "value %u x %u sequences x seq_len %llu is %llu tokens a validation pass, more "
                "than %u",
                t->eval_batches, t->global_batch / t->micro_batches, (unsigned long long)seq_len,
                (unsigned long long)eval_tokens, EELLM_MAX_STEP_TOKENS);
  if (t->parallelism && check_parallelism(c, t->parallelism, model) != 0) return -1;
  return check_fields(c, msg, "");
}

Eellm__Train *eellm_train_spec_load(const char *path, const Eellm__Model *model, char *err,
                                    size_t errlen) {
  struct eellm_textpb_locs locs = {0};
  ProtobufCMessage *msg = load(path, &eellm__train__descriptor, &locs, err, errlen);
  if (msg) {
    struct checker c = {path, &locs, err, errlen};
    if (check_train(&c, (Eellm__Train *)msg, model) != 0) {
      protobuf_c_message_free_unpacked(msg, NULL);
      msg = NULL;
    }
  }
  eellm_textpb_locs_free(&locs);
  return (Eellm__Train *)msg;
}

void eellm_model_spec_free(Eellm__Model *spec) {
  if (spec) protobuf_c_message_free_unpacked(&spec->base, NULL);
}

void eellm_train_spec_free(Eellm__Train *spec) {
  if (spec) protobuf_c_message_free_unpacked(&spec->base, NULL);
}

/* ---- comparing specs ------------------------------------------------------ */

static size_t scalar_size(ProtobufCType type) {
  switch (type) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE:
      return 8;
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING: case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    default: return 4;
  }
}

static int diff_message(const ProtobufCMessageDescriptor *desc, const ProtobufCMessage *a,
                        const ProtobufCMessage *b, char *field, size_t n);

/* Compares one value of field f stored at pa and pb; absent sub-messages count as defaults. */
static int diff_value(const ProtobufCFieldDescriptor *f, const void *pa, const void *pb,
                      char *field, size_t n) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
      const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
      return strcmp(sa ? sa : "", sb ? sb : "") != 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      const ProtobufCBinaryData *ba = pa, *bb = pb;
      return ba->len != bb->len || (ba->len && memcmp(ba->data, bb->data, ba->len) != 0);
    }
    case PROTOBUF_C_TYPE_MESSAGE:
      return diff_message(f->descriptor, *(ProtobufCMessage *const *)pa,
                          *(ProtobufCMessage *const *)pb, field, n);
    default: return memcmp(pa, pb, scalar_size(f->type)) != 0;
  }
}

/* Prefixes `name` (and [i]) to whatever diff_value appended to field. */
static void prefix_field(char *field, size_t n, const char *name, long index) {
  char rest[256];
  snprintf(rest, sizeof rest, "%s", field);
  if (index >= 0)
    snprintf(field, n, "%s[%ld]%s%s", name, index, *rest ? "." : "", rest);
  else
    snprintf(field, n, "%s%s%s", name, *rest ? "." : "", rest);
}

static int diff_message(const ProtobufCMessageDescriptor *desc, const ProtobufCMessage *a,
                        const ProtobufCMessage *b, char *field, size_t n) {
  if (a == b) return 0;
  ProtobufCMessage *defaults = NULL;
  if (!a || !b) {
    defaults = calloc(1, desc->sizeof_message);
    if (!defaults) abort();
    desc->message_init(defaults);
    if (!a) a = defaults;
    if (!b) b = defaults;
  }
  int differs = 0;
  for (unsigned i = 0; i < desc->n_fields && !differs; i++) {
    const ProtobufCFieldDescriptor *f = &desc->fields[i];
    const char *ra = (const char *)a + f->offset, *rb = (const char *)b + f->offset;
    field[0] = 0;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t na = *(const size_t *)((const char *)a + f->quantifier_offset);
      size_t nb = *(const size_t *)((const char *)b + f->quantifier_offset);
      if (na != nb) {
        snprintf(field, n, "%s (%zu vs %zu entries)", f->name, na, nb);
        differs = 1;
        break;
      }
      const char *va = *(char *const *)ra, *vb = *(char *const *)rb;
      size_t size = scalar_size(f->type);
      for (size_t k = 0; k < na && !differs; k++)
        if (diff_value(f, va + k * size, vb + k * size, field, n)) {
          prefix_field(field, n, f->name, (long)k);
          differs = 1;
        }
    } else if (diff_value(f, ra, rb, field, n)) {
      prefix_field(field, n, f->name, -1);
      differs = 1;
    }
  }
  free(defaults);
  return differs;
}

int eellm_spec_diff(const ProtobufCMessage *a, const ProtobufCMessage *b, char *field, size_t n) {
  if (n) field[0] = 0;
  return diff_message(a->descriptor, a, b, field, n);
}
