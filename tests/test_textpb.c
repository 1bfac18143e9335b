/* Protobuf text format: every feature parsed into eellm.Model / eellm.Train and a
 * test schema with every scalar type; print -> parse -> pack round trips; error
 * messages with their line:col; field locations; spec files in text and binary;
 * and a mutation fuzz of a valid spec (run it under ASan). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eellm.h"
#include "runtime/io/specio.h"
#include "testutil.h"
#include "textpb_scalars.pb-c.h"

static char err[512];

static ProtobufCMessage *parse(const char *text, const ProtobufCMessageDescriptor *desc,
                               struct eellm_textpb_locs *locs) {
  err[0] = '\0';
  ProtobufCMessage *msg = eellm_textpb_parse(text, strlen(text), desc, "spec.txtpb", locs, err, sizeof err);
  if (!msg) printf("  parse error: %s\n", err);
  return msg;
}

static int check_str(const char *what, const char *got, const char *want) {
  int same = got && strcmp(got, want) == 0;
  if (!same) printf("  %s:\n    got  [%s]\n    want [%s]\n", what, got ? got : "(null)", want);
  return tu_ok(same, what);
}

static void free_msg(ProtobufCMessage *msg) { protobuf_c_message_free_unpacked(msg, NULL); }

/* Packs msg into a malloc'd buffer. */
static uint8_t *pack(const ProtobufCMessage *msg, size_t *len) {
  *len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(*len + 1);
  protobuf_c_message_pack(msg, buf);
  return buf;
}

/* msg printed into a malloc'd string. */
static char *print_to_string(const ProtobufCMessage *msg) {
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  eellm_textpb_print(out, msg);
  fclose(out);
  return text;
}

/* print -> parse -> pack gives the bytes msg packs to. */
static void check_round_trip(const char *what, const ProtobufCMessage *msg) {
  char *text = print_to_string(msg);
  ProtobufCMessage *again = parse(text, msg->descriptor, NULL);
  size_t len_a = 0, len_b = 0;
  uint8_t *a = pack(msg, &len_a);
  uint8_t *b = again ? pack(again, &len_b) : NULL;
  int same = b && len_a == len_b && memcmp(a, b, len_a) == 0;
  if (!same) printf("  %s printed as:\n%s", what, text);
  tu_ok(same, what);
  free(a);
  free(b);
  free(text);
  free_msg(again);
}

/* ---- features on eellm's schemas -------------------------------------- */

static const char model_text[] =
    "# proto-message: eellm.Model\n"
    "name: \"tab\\there \\\"q\\\" \\'s\\' \\\\ \\101\\x42\\n\" 'more'  # adjacent strings\n"
    "vocab_size: 0x10, context_length: 0200;\n" /* hex, octal */
    "d_model: 64 n_heads: 4\n"
    "n_layers: 3 ffn_size: 0\n"
    "norm: RMSNORM activation: 1 positions: ROPE\n" /* enum by number */
    "bias: False tie_embeddings: 0\n"
    "norm_eps: 1e-5 rope_theta: inf init_std: .5f\n"
    "exits { layer: 1 placement: PRE structure: PLAIN tied: True }\n"
    "exits: { layer: 2; loss_weight: -3, schedule: < init: nan warmup_steps: 10 shape: COSINE > }\n"
    "exits < layer: 3 temperature: -inf >\n"
    "exits: [ { layer: 1 }, < structure: BLOCK > ]\n";

static void test_model_features(void) {
  Eellm__Model *m = (Eellm__Model *)parse(model_text, &eellm__model__descriptor, NULL);
  if (!tu_ok(m != NULL, "feature-rich eellm.Model parses")) return;
  check_str("escapes and concatenation", m->name, "tab\there \"q\" 's' \\ AB\nmore");
  tu_ok(m->has_vocab_size && m->vocab_size == 16, "hex 0x10");
  tu_ok(m->context_length == 128, "octal 0200");
  tu_ok(m->d_model == 64 && m->n_heads == 4 && m->n_layers == 3, "separators and several per line");
  tu_ok(m->has_ffn_size && m->ffn_size == 0, "explicit zero sets has_");
  tu_ok(m->norm == EELLM__MODEL__NORM__RMSNORM && m->activation == EELLM__MODEL__ACTIVATION__SWIGLU &&
            m->positions == EELLM__MODEL__POSITIONS__ROPE,
        "enums by name and number");
  tu_ok(m->has_bias && !m->bias && m->has_tie_embeddings && !m->tie_embeddings, "bools False and 0");
  tu_ok(m->norm_eps == 1e-5f && isinf(m->rope_theta) && m->init_std == 0.5f, "1e-5, inf, .5f");
  tu_ok(m->n_exits == 5, "repeated messages: given several times and as a list");
  if (m->n_exits == 5) {
    Eellm__Exit **e = m->exits;
    tu_ok(e[0]->layer == 1 && e[0]->placement == EELLM__EXIT__PLACEMENT__PRE &&
              e[0]->structure == EELLM__EXIT__STRUCTURE__PLAIN && e[0]->has_tied && e[0]->tied,
          "exit 0: field { ... }");
    tu_ok(e[1]->layer == 2 && e[1]->loss_weight == -3.0f && e[1]->schedule &&
              isnan(e[1]->schedule->init) && e[1]->schedule->warmup_steps == 10 &&
              e[1]->schedule->shape == EELLM__WEIGHT_SCHEDULE__SHAPE__COSINE,
          "exit 1: field: { ... } with < ... > inside, -3, nan");
    tu_ok(e[2]->layer == 3 && isinf(e[2]->temperature) && e[2]->temperature < 0 && !e[2]->schedule,
          "exit 2: field < ... >, -inf");
    tu_ok(e[3]->layer == 1 && e[4]->structure == EELLM__EXIT__STRUCTURE__BLOCK, "exits 3-4: list");
    tu_ok(!e[4]->has_layer && e[4]->layer == 0 && !e[3]->has_tied && e[3]->tied &&
              e[3]->loss_weight == 1.0f && e[3]->temperature == 1.0f,
          "absent fields keep the schema defaults, has_ unset");
  }
  check_round_trip("eellm.Model round trip", &m->base);
  free_msg(&m->base);
}

static void test_train_features(void) {
  const char *text = "optimizer { lr: 3e-4 grad_clip: 0 }\n"
                     "seed: 18446744073709551615\n"
                     "parallelism { pp: 2 stage_layers: [1, 2] stage_layers: 3 stage_layers: [] }\n"
                     "lr_schedule: { kind: CONSTANT }";
  Eellm__Train *t = (Eellm__Train *)parse(text, &eellm__train__descriptor, NULL);
  if (!tu_ok(t != NULL, "eellm.Train parses")) return;
  tu_ok(t->optimizer && t->optimizer->lr == 3e-4f && t->optimizer->has_grad_clip &&
            t->optimizer->grad_clip == 0 && t->optimizer->beta1 == 0.9f,
        "optimizer values and defaults");
  tu_ok(t->has_seed && t->seed == UINT64_MAX, "uint64 maximum");
  tu_ok(t->parallelism && t->parallelism->n_stage_layers == 3 && t->parallelism->stage_layers[0] == 1 &&
            t->parallelism->stage_layers[1] == 2 && t->parallelism->stage_layers[2] == 3,
        "repeated scalars: lists, single values and an empty list append");
  tu_ok(t->lr_schedule && t->lr_schedule->kind == EELLM__LRSCHEDULE__KIND__CONSTANT, "field: { }");
  tu_ok(!t->has_steps && t->steps == 1000, "default steps");
  check_round_trip("eellm.Train round trip", &t->base);
  free_msg(&t->base);

  Eellm__Train *empty = (Eellm__Train *)parse("  # nothing but a comment\n", &eellm__train__descriptor, NULL);
  tu_ok(empty && !empty->optimizer && empty->global_batch == 8, "empty text: all defaults");
  free_msg(&empty->base);
}

static void test_canonical_print(void) {
  Eellm__Model *m = (Eellm__Model *)parse(
      "exits { schedule { init: 0.1 } layer: 2 } d_model: 64 name: 'a\\001\"' norm_eps: 1e-5 bias: false",
      &eellm__model__descriptor, NULL);
  char *text = m ? print_to_string(&m->base) : NULL;
  check_str("canonical text", text,
            "name: \"a\\001\\\"\"\n"
            "d_model: 64\n"
            "bias: false\n"
            "norm_eps: 1e-05\n"
            "exits {\n"
            "  layer: 2\n"
            "  schedule {\n"
            "    init: 0.1\n"
            "  }\n"
            "}\n");
  free(text);
  if (m) free_msg(&m->base);
}

/* ---- every scalar type ------------------------------------------------- */

static void test_all_scalars(void) {
  const char *text =
      "i32: -2147483648 i64: -9223372036854775808 u32: 4294967295 u64: 0xffffffffffffffff\n"
      "s32: -5 s64: 2147483648000 f32: 7 f64: 8 sf32: -9 sf64: -10\n"
      "fl: -0 db: 2.5e-300 flag: t\n"
      "text: \"\\xe2\\x82\\xac\" data: \"\\000\\377\\x7f\" color: BLUE\n"
      "many_i64: [-1, 0x7fffffffffffffff] many_db: [-inf, nan, 1e308] many_db: 0.1\n"
      "many_text: 'x' many_text: \"\" many_data: [\"\\0\", ''] many_color: [RED, -2, 1]\n"
      "many_flag: [true, false, 1, 0, True, False, t, f]\n"
      "inner { id: 7 } inners [ { id: 1 label: 'one' }, { id: 2 } ]\n"
      "child { child { i32: 3 } }\n";
  TextpbTest__Scalars *s = (TextpbTest__Scalars *)parse(text, &textpb_test__scalars__descriptor, NULL);
  if (!tu_ok(s != NULL, "every scalar type parses")) return;
  tu_ok(s->i32 == INT32_MIN && s->i64 == INT64_MIN && s->u32 == UINT32_MAX && s->u64 == UINT64_MAX,
        "integer extremes");
  tu_ok(s->s32 == -5 && s->s64 == 2147483648000ll && s->f32 == 7 && s->f64 == 8 && s->sf32 == -9 &&
            s->sf64 == -10,
        "sint, fixed, sfixed");
  tu_ok(s->has_fl && s->fl == 0 && signbit(s->fl) && s->db == 2.5e-300 && s->has_flag && s->flag,
        "-0 float, small double, bool t");
  check_str("UTF-8 by escapes", s->text, "\xe2\x82\xac");
  tu_ok(s->has_data && s->data.len == 3 && s->data.data[0] == 0 && s->data.data[1] == 0xff &&
            s->data.data[2] == 0x7f,
        "bytes with NUL and high bytes");
  tu_ok(s->has_color && s->color == TEXTPB_TEST__SCALARS__COLOR__BLUE, "negative enum by name");
  tu_ok(s->n_many_i64 == 2 && s->many_i64[0] == -1 && s->many_i64[1] == INT64_MAX, "repeated int64");
  tu_ok(s->n_many_db == 4 && isinf(s->many_db[0]) && s->many_db[0] < 0 && isnan(s->many_db[1]) && s->many_db[2] == 1e308 &&
            s->many_db[3] == 0.1,
        "repeated double");
  tu_ok(s->n_many_text == 2 && !strcmp(s->many_text[0], "x") && !strcmp(s->many_text[1], ""),
        "repeated string");
  tu_ok(s->n_many_data == 2 && s->many_data[0].len == 1 && s->many_data[1].len == 0, "repeated bytes");
  tu_ok(s->n_many_color == 3 && s->many_color[1] == TEXTPB_TEST__SCALARS__COLOR__BLUE &&
            s->many_color[2] == TEXTPB_TEST__SCALARS__COLOR__GREEN,
        "repeated enum by name and number");
  int flags_ok = s->n_many_flag == 8;
  for (size_t i = 0; flags_ok && i < 8; i++) flags_ok = s->many_flag[i] == (i % 2 == 0);
  tu_ok(flags_ok, "every bool spelling");
  tu_ok(s->inner && s->inner->id == 7 && !strcmp(s->inner->label, "none") && s->n_inners == 2 &&
            !strcmp(s->inners[0]->label, "one"),
        "required field, string default");
  tu_ok(s->child && s->child->child && s->child->child->i32 == 3, "recursive message");
  check_round_trip("every scalar round trip", &s->base);
  free_msg(&s->base);

  /* print -> parse keeps every byte value and float bit pattern */
  TextpbTest__Scalars raw = TEXTPB_TEST__SCALARS__INIT;
  uint8_t all_bytes[256];
  for (int i = 0; i < 256; i++) all_bytes[i] = (uint8_t)i;
  raw.has_data = 1;
  raw.data = (ProtobufCBinaryData){256, all_bytes};
  raw.text = "\x01 tab\t'\"\\\x7f\xc3\xa9";
  raw.has_fl = 1;
  raw.fl = 1.17549435e-38f * 0.5f; /* subnormal */
  raw.has_db = 1;
  raw.db = 0.1 + 0.2;
  check_round_trip("all byte values, subnormal float, 0.1+0.2 round trip", &raw.base);
}

/* ---- errors ------------------------------------------------------------ */

struct bad_input {
  const ProtobufCMessageDescriptor *desc;
  const char *text, *error;
};

static void test_errors(void) {
  const ProtobufCMessageDescriptor *M = &eellm__model__descriptor, *T = &eellm__train__descriptor,
                                   *S = &textpb_test__scalars__descriptor;
  const struct bad_input cases[] = {
      {M, "d_model: 64\nd_modle: 3\n", "spec.txtpb:2:1: unknown field 'd_modle' in eellm.Model"},
      {M, "exits {\n  layer: 1\n}\nexits {\n\tlayer:   -2\n}\n",
       "spec.txtpb:5:11: field 'layer' of eellm.Exit: expected an unsigned integer, found '-2'"},
      {M, "d_model: 5000000000", "spec.txtpb:1:10: value 5000000000 out of range for uint32 field 'd_model'"},
      {M, "norm: LAYERNROM",
       "spec.txtpb:1:7: unknown enum value 'LAYERNROM' for field 'norm' (expected LAYERNORM or RMSNORM)"},
      {M, "norm: 7", "spec.txtpb:1:7: unknown enum value '7' for field 'norm' (expected LAYERNORM or RMSNORM)"},
      {M, "activation: \"GELU\"",
       "spec.txtpb:1:13: field 'activation' of eellm.Model: expected GELU or SWIGLU, found '\"GELU\"'"},
      {M, "name: \"abc\nd_model: 3", "spec.txtpb:1:7: unterminated string"},
      {M, "# c\nexits {\n  layer: 1\n", "spec.txtpb:2:7: '{' of field 'exits' is never closed"},
      {M, "exits < layer: 1 }", "spec.txtpb:1:18: expected a field name or '>', found '}'"},
      {M, "d_model: 64\n d_model: 65", "spec.txtpb:2:2: field 'd_model' of eellm.Model given twice"},
      {M, "bias: yes", "spec.txtpb:1:7: field 'bias' of eellm.Model: expected true or false, found 'yes'"},
      {M, "bias: 2", "spec.txtpb:1:7: field 'bias' of eellm.Model: expected true or false, found '2'"},
      {M, "d_model 64", "spec.txtpb:1:9: expected ':' after field name 'd_model', found '64'"},
      {M, "d_model:", "spec.txtpb:1:9: field 'd_model' of eellm.Model: expected an unsigned integer, found end of file"},
      {M, "d_model: 1.5", "spec.txtpb:1:10: field 'd_model' of eellm.Model: expected an unsigned integer, found '1.5'"},
      {M, "name: 'a\\qb'", "spec.txtpb:1:9: invalid escape '\\q' in string"},
      {M, "name: 'a\\400'", "spec.txtpb:1:9: invalid escape '\\4' in string"},
      {M, "name: 'a\\0b'", "spec.txtpb:1:7: string field 'name' cannot hold a NUL byte"},
      {M, "name: 3", "spec.txtpb:1:7: field 'name' of eellm.Model: expected a string, found '3'"},
      {M, "norm_eps: 1e40", "spec.txtpb:1:11: value 1e40 out of range for float field 'norm_eps'"},
      {M, "norm_eps: 0x1p3", "spec.txtpb:1:11: field 'norm_eps' of eellm.Model: expected a number, found '0x1p3'"},
      {M, "d_model: [1, 2]", "spec.txtpb:1:10: field 'd_model' of eellm.Model is not repeated: a list '[...]' is not allowed"},
      {M, "exits { layer: 1 } }", "spec.txtpb:1:20: expected a field name, found '}'"},
      {M, "exits: 3", "spec.txtpb:1:8: expected '{' to start field 'exits' of eellm.Model, found '3'"},
      {M, "n_layers: 12 @", "spec.txtpb:1:14: unexpected character '@'"},
      {M, "n_layers: 12\n\x01", "spec.txtpb:2:1: unexpected character '\\x01'"},
      {T, "parallelism { stage_layers: [1, 2 }", "spec.txtpb:1:35: expected ',' or ']' in the list, found '}'"},
      {T, "seed: 18446744073709551616", "spec.txtpb:1:7: value 18446744073709551616 out of range for uint64 field 'seed'"},
      {S, "i32: 2147483648", "spec.txtpb:1:6: value 2147483648 out of range for int32 field 'i32'"},
      {S, "i32: -2147483649", "spec.txtpb:1:6: value -2147483649 out of range for int32 field 'i32'"},
      {S, "i64: -9223372036854775809", "spec.txtpb:1:6: value -9223372036854775809 out of range for int64 field 'i64'"},
      {S, "inner { label: 'x' }", "spec.txtpb:1:20: missing required field 'id' in textpb_test.Inner"},
      {S, "pick_a: 3", "spec.txtpb:1:1: field 'pick_a' of textpb_test.Scalars is in a oneof, which is not supported"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char what[160];
    snprintf(what, sizeof what, "error for \"%.60s\"", cases[i].text);
    err[0] = '\0';
    ProtobufCMessage *msg =
        eellm_textpb_parse(cases[i].text, strlen(cases[i].text), cases[i].desc, "spec.txtpb", NULL, err, sizeof err);
    tu_ok(msg == NULL, what);
    check_str(what, err, cases[i].error);
    if (msg) free_msg(msg);
  }

  /* nesting deeper than the limit is an error, not a stack overflow */
  size_t depth = 100;
  char *deep = malloc(depth * 8 + 1);
  for (size_t i = 0; i < depth; i++) memcpy(deep + 7 * i, "child {", 7);
  memset(deep + 7 * depth, '}', depth);
  deep[8 * depth] = '\0';
  ProtobufCMessage *msg = eellm_textpb_parse(deep, strlen(deep), S, NULL, NULL, err, sizeof err);
  tu_ok(msg == NULL, "nesting deeper than the limit fails");
  check_str("depth limit error", err, "<text>:1:449: messages nested more than 64 deep");
  if (msg) free_msg(msg);
  free(deep);
}

/* ---- locations --------------------------------------------------------- */

static void test_locations(void) {
  struct eellm_textpb_locs locs = {0};
  const char *text = "d_model: 64\n"
                     "exits { layer: 1 }\n"
                     "  exits {\n"
                     "    layer: 2\n"
                     "  }\n";
  Eellm__Model *m = (Eellm__Model *)parse(text, &eellm__model__descriptor, &locs);
  if (!tu_ok(m && m->n_exits == 2, "parse with locations")) return;
  const struct eellm_textpb_loc *d = eellm_textpb_where(&locs, &m->base, "d_model", 0);
  const struct eellm_textpb_loc *e1 = eellm_textpb_where(&locs, &m->base, "exits", 1);
  const struct eellm_textpb_loc *l1 = eellm_textpb_where(&locs, &m->exits[1]->base, "layer", 0);
  tu_ok(d && d->line == 1 && d->col == 1, "d_model at 1:1");
  tu_ok(e1 && e1->line == 3 && e1->col == 3 && e1->index == 1, "second exit at 3:3");
  tu_ok(l1 && l1->line == 4 && l1->col == 5, "its layer at 4:5");
  tu_ok(!eellm_textpb_where(&locs, &m->base, "n_heads", 0), "absent field: NULL");
  tu_ok(!eellm_textpb_where(&locs, &m->base, "exits", 2), "absent element: NULL");
  tu_ok(!eellm_textpb_where(&locs, &m->base, "no_such_field", 0), "unknown name: NULL");

  Eellm__Train *t = (Eellm__Train *)parse("parallelism {\n  stage_layers: [4,\n    5]\n}",
                                          &eellm__train__descriptor, &locs);
  const struct eellm_textpb_loc *s1 =
      t && t->parallelism ? eellm_textpb_where(&locs, &t->parallelism->base, "stage_layers", 1) : NULL;
  tu_ok(s1 && s1->line == 3 && s1->col == 5, "list element at its own position");
  size_t before = locs.n;
  tu_ok(!eellm_textpb_parse("d_model: 1 n_heads: x", 21, &eellm__model__descriptor, NULL, &locs, err,
                            sizeof err) &&
            locs.n == before,
        "a failed parse leaves locs as they were");
  free_msg(&m->base);
  free_msg(&t->base);
  eellm_textpb_locs_free(&locs);
}

/* ---- spec files ------------------------------------------------------- */

static int pack_equal(const ProtobufCMessage *a, const ProtobufCMessage *b) {
  size_t la, lb;
  uint8_t *pa = pack(a, &la), *pb = pack(b, &lb);
  int same = la == lb && memcmp(pa, pb, la) == 0;
  free(pa);
  free(pb);
  return same;
}

static void write_bytes(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  fwrite(data, 1, len, f);
  fclose(f);
}

static ProtobufCMessage *read_spec(const char *path, const ProtobufCMessageDescriptor *desc) {
  err[0] = '\0';
  return eellm_spec_read(path, desc, NULL, err, sizeof err);
}

static void test_spec_files(void) {
  const char *dir = tu_tempdir();
  char txt[64], bin[64], sniff_txt[64], sniff_bin[64], bad[64], missing[64];
  snprintf(txt, sizeof txt, "%s/m.txtpb", dir);
  snprintf(bin, sizeof bin, "%s/m.pb", dir);
  snprintf(sniff_txt, sizeof sniff_txt, "%s/m.spec", dir);
  snprintf(sniff_bin, sizeof sniff_bin, "%s/m.data", dir);
  snprintf(bad, sizeof bad, "%s/bad.pb", dir);
  snprintf(missing, sizeof missing, "%s/missing.txtpb", dir);

  const ProtobufCMessageDescriptor *M = &eellm__model__descriptor, *T = &eellm__train__descriptor;
  ProtobufCMessage *model = parse(model_text, M, NULL);
  tu_ok(eellm_spec_write_text(txt, model, err, sizeof err) == 0, "write text");
  tu_ok(eellm_spec_write_binary(bin, model, err, sizeof err) == 0, "write binary");
  tu_ok(eellm_spec_message_of(txt) == M, "written text names eellm.Model");
  tu_ok(eellm_spec_message_of(bin) == NULL, "binary has no header");
  ProtobufCMessage *from_txt = read_spec(txt, M), *from_bin = read_spec(bin, M);
  tu_ok(from_txt && pack_equal(model, from_txt), "text file reads back");
  tu_ok(from_bin && pack_equal(model, from_bin), "binary file reads back");
  rename(txt, sniff_txt);
  rename(bin, sniff_bin);
  ProtobufCMessage *sniffed_txt = read_spec(sniff_txt, M), *sniffed_bin = read_spec(sniff_bin, M);
  tu_ok(sniffed_txt && pack_equal(model, sniffed_txt), "text recognised without its extension");
  tu_ok(sniffed_bin && pack_equal(model, sniffed_bin), "binary recognised without its extension");

  char want[256];
  tu_ok(!read_spec(sniff_txt, T), "Model file read as Train");
  snprintf(want, sizeof want, "%s: its proto-message header names eellm.Model, expected eellm.Train", sniff_txt);
  check_str("header mismatch error", err, want);

  size_t len;
  uint8_t *bytes = pack(model, &len);
  write_bytes(bad, bytes, len - 1);
  tu_ok(!read_spec(bad, M), "truncated binary fails");
  snprintf(want, sizeof want, "%s: truncated or malformed binary eellm.Model", bad);
  check_str("truncated binary error", err, want);
  write_bytes(bad, "\xff\xff\xff", 3);
  tu_ok(!read_spec(bad, M), "malformed binary fails");
  check_str("malformed binary error", err, want);
  free(bytes);

  tu_ok(!read_spec(missing, M), "missing file fails");
  snprintf(want, sizeof want, "%s: No such file or directory", missing);
  check_str("missing file error", err, want);
  tu_ok(eellm_spec_message_of(missing) == NULL, "missing file: no message");
  snprintf(want, sizeof want, "%s/no/such/dir/x.pb", dir);
  tu_ok(eellm_spec_write_binary(want, model, err, sizeof err) != 0 && strstr(err, "No such file"),
        "write into a missing directory fails");

  write_bytes(txt, "# proto-file: train.proto\n#proto-message:eellm.Train\nsteps: 5\n", 61);
  tu_ok(eellm_spec_message_of(txt) == T, "header names eellm.Train");
  ProtobufCMessage *train = read_spec(txt, T);
  tu_ok(train && ((Eellm__Train *)train)->steps == 5, "train text file");
  write_bytes(txt, "steps: 5 # proto-message: eellm.Train\n", 38);
  tu_ok(eellm_spec_message_of(txt) == NULL, "header only before the first field");
  tu_ok(!read_spec(dir, T) && strstr(err, "Is a directory"), "a directory is not a spec");
  write_bytes(txt, "steps: x\n", 9);
  tu_ok(!read_spec(txt, T) && strstr(err, "/m.txtpb:1:8: field 'steps'"), "text errors name the file");

  free_msg(model);
  free_msg(from_txt);
  free_msg(from_bin);
  free_msg(sniffed_txt);
  free_msg(sniffed_bin);
  free_msg(train);
}

/* ---- fuzz --------------------------------------------------------------- */

/* Either a message or a "spec.txtpb:L:C: ..." error; the message packs and prints. */
static int parse_is_clean(const char *text, size_t len, int *parsed) {
  struct eellm_textpb_locs locs = {0};
  err[0] = '\0';
  ProtobufCMessage *msg = eellm_textpb_parse(text, len, &eellm__model__descriptor, "spec.txtpb", &locs, err, sizeof err);
  int clean;
  if (msg) {
    size_t packed;
    free(pack(msg, &packed));
    free(print_to_string(msg));
    clean = err[0] == '\0';
    (*parsed)++;
    free_msg(msg);
  } else {
    int line, col;
    clean = sscanf(err, "spec.txtpb:%d:%d: ", &line, &col) == 2 && line >= 1 && col >= 1 &&
            !strchr(err, '\n');
  }
  eellm_textpb_locs_free(&locs);
  return clean;
}

static void test_fuzz(void) {
  size_t len = strlen(model_text);
  char *text = malloc(len);
  int clean = 1, parsed = 0, runs = 0;
  for (size_t cut = 0; cut <= len; cut++, runs++) { /* every truncation */
    memcpy(text, model_text, cut);
    clean &= parse_is_clean(text, cut, &parsed);
  }
  static const char interesting[] = "{}<>[]:;,-\"'\\#\n .0x9eE_\xff";
  tu_seed(42);
  for (int round = 0; round < 4000; round++, runs++) {
    memcpy(text, model_text, len);
    int edits = 1 + (int)tu_uniform(0, 3);
    for (int k = 0; k < edits; k++) {
      size_t at = (size_t)tu_uniform(0, (double)len);
      text[at] = tu_uniform(0, 1) < 0.7 ? interesting[(size_t)tu_uniform(0, sizeof interesting - 1)]
                                        : (char)(int)tu_uniform(0, 256);
    }
    size_t cut = tu_uniform(0, 1) < 0.2 ? (size_t)tu_uniform(0, (double)len) : len;
    clean &= parse_is_clean(text, cut, &parsed);
  }
  printf("  fuzz: %d inputs, %d parsed, %d rejected\n", runs, parsed, runs - parsed);
  tu_ok(clean, "every truncation and mutation gives a message or one clean error line");
  free(text);
}

int main(void) {
  tu_start();
  test_model_features();
  test_train_features();
  test_canonical_print();
  test_all_scalars();
  test_errors();
  test_locations();
  test_spec_files();
  test_fuzz();
  return tu_finish();
}
