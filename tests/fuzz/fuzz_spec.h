/* Oracles shared by the spec targets: equality as packed bytes, and the text
 * round trip print -> parse. */
#ifndef EELLM_FUZZ_SPEC_H
#define EELLM_FUZZ_SPEC_H

#include "fuzz.h"

#include <math.h>
#include <protobuf-c/protobuf-c.h>

#include "runtime/io/specio.h"
#include "runtime/io/textpb.h"

/* Whether a and b pack to the same bytes (protobuf-c packs fields in number order). */
static inline int fuzz_pack_equal(const ProtobufCMessage *a, const ProtobufCMessage *b) {
  size_t na, nb;
  uint8_t *pa = eellm_spec_pack(a, &na), *pb = eellm_spec_pack(b, &nb);
  FUZZ_CHECK(pa && pb, "out of memory");
  int equal = na == nb && memcmp(pa, pb, na) == 0;
  free(pa);
  free(pb);
  return equal;
}

/* msg in canonical text, malloc'd and NUL-terminated (*len bytes). */
static inline char *fuzz_print(const ProtobufCMessage *msg, size_t *len) {
  char *text = NULL;
  FILE *out = open_memstream(&text, len);
  FUZZ_CHECK(out, "open_memstream");
  FUZZ_CHECK(eellm_textpb_print(out, msg) == 0, "eellm_textpb_print failed");
  fclose(out);
  return text;
}

/* Drops the unknown fields of msg and its sub-messages (unpacked with the
 * default allocator), and NaN payloads: binary specs keep fields of newer
 * schemas and any NaN bits, which text cannot hold. */
static inline void fuzz_strip_unknown(ProtobufCMessage *msg) {
  for (unsigned i = 0; i < msg->n_unknown_fields; i++) free(msg->unknown_fields[i].data);
  free(msg->unknown_fields);
  msg->unknown_fields = NULL;
  msg->n_unknown_fields = 0;
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    size_t n;
    char *m = (char *)eellm_pb_values(msg, f, &n); /* msg is the caller's to change */
    for (size_t k = 0; k < n; k++) {
      if (f->type == PROTOBUF_C_TYPE_MESSAGE && ((ProtobufCMessage **)m)[k])
        fuzz_strip_unknown(((ProtobufCMessage **)m)[k]);
      /* Text writes a NaN's sign, not its payload. */
      if (f->type == PROTOBUF_C_TYPE_FLOAT && isnan(((float *)m)[k]))
        ((float *)m)[k] = copysignf(NAN, ((float *)m)[k]);
      if (f->type == PROTOBUF_C_TYPE_DOUBLE && isnan(((double *)m)[k]))
        ((double *)m)[k] = copysign(NAN, ((double *)m)[k]);
    }
  }
}

/* Printing msg (less its unknown fields) and parsing the text gives an equal
 * message, whose text is the same. */
static inline void fuzz_text_round_trip(const ProtobufCMessage *original) {
  size_t len, len2, packed_len;
  uint8_t *packed = eellm_spec_pack(original, &packed_len);
  ProtobufCMessage *msg = protobuf_c_message_unpack(original->descriptor, NULL, packed_len, packed);
  FUZZ_CHECK(msg, "packed %s does not unpack", original->descriptor->name);
  free(packed);
  fuzz_strip_unknown(msg);
  char *text = fuzz_print(msg, &len);
  char err[512] = "";
  ProtobufCMessage *again =
      eellm_textpb_parse(text, len, msg->descriptor, "<printed>", NULL, err, sizeof err);
  FUZZ_CHECK(again, "the printed %s does not parse: %s\n---\n%s---", msg->descriptor->name, err,
             text);
  FUZZ_CHECK(fuzz_pack_equal(msg, again), "printed and parsed again, %s differs:\n%s",
             msg->descriptor->name, text);
  char *text2 = fuzz_print(again, &len2);
  FUZZ_CHECK(len == len2 && memcmp(text, text2, len) == 0, "printing is not stable:\n%s---\n%s",
             text, text2);
  free(text2);
  free(text);
  protobuf_c_message_free_unpacked(again, NULL);
  protobuf_c_message_free_unpacked(msg, NULL);
}

/* Whether every enum field of msg (and its sub-messages) holds a named value:
 * the text format can only write those. protobuf-c's unpack stores any number
 * in an enum field; the spec checks refuse unknown ones, so only messages that
 * were not checked (a bare unpacked training spec) need this guard. */
static inline int fuzz_enums_known(const ProtobufCMessage *msg) {
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    size_t n;
    const char *m = eellm_pb_values(msg, f, &n);
    for (size_t k = 0; k < n; k++) {
      if (f->type == PROTOBUF_C_TYPE_ENUM &&
          !protobuf_c_enum_descriptor_get_value(f->descriptor, ((const int *)m)[k]))
        return 0;
      if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        const ProtobufCMessage *sub = ((ProtobufCMessage *const *)m)[k];
        if (sub && !fuzz_enums_known(sub)) return 0;
      }
    }
  }
  return 1;
}

/* Packing msg and unpacking the bytes gives an equal message. */
static inline ProtobufCMessage *fuzz_binary_round_trip(const ProtobufCMessage *msg) {
  size_t len;
  uint8_t *packed = eellm_spec_pack(msg, &len);
  FUZZ_CHECK(packed, "out of memory");
  ProtobufCMessage *again = protobuf_c_message_unpack(msg->descriptor, NULL, len, packed);
  FUZZ_CHECK(again, "packed %s (%zu bytes) does not unpack", msg->descriptor->name, len);
  FUZZ_CHECK(fuzz_pack_equal(msg, again), "packed and unpacked, %s differs",
             msg->descriptor->name);
  free(packed);
  return again;
}

#endif
