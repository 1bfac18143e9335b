/* Protobuf text format (.txtpb) for any protobuf-c message, driven only by its
 * descriptors: a parser that builds a message protobuf_c_message_free_unpacked(msg,
 * NULL) frees, remembering where each field was written, and a canonical printer. */
#ifndef EELLM_TEXTPB_H
#define EELLM_TEXTPB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdio.h>

/* Where each field came from in the text, so later validation can point at it:
 * the field name's position, or for the elements of a list `f: [a, b]` each element's. */
struct eellm_textpb_loc {
  const ProtobufCMessage *msg;
  const ProtobufCFieldDescriptor *field;
  unsigned index; /* element of a repeated field; 0 otherwise */
  int line, col;  /* 1-based */
};
struct eellm_textpb_locs {
  struct eellm_textpb_loc *v;
  size_t n, cap;
};
void eellm_textpb_locs_free(struct eellm_textpb_locs *locs);
/* Looks up where field `name` (index for repeated, else 0) of `msg` was written; NULL if not in the text. */
const struct eellm_textpb_loc *eellm_textpb_where(const struct eellm_textpb_locs *locs,
                                                  const ProtobufCMessage *msg, const char *name,
                                                  unsigned index);

/* Parses text[0..len) as a `desc` message. Returns it (free with
 * protobuf_c_message_free_unpacked(msg, NULL)), or NULL with a one-line
 * "FILE:LINE:COL: ..." error in err. Appends to locs when not NULL; on error
 * locs is left as it was. `filename` only labels errors (NULL: "<text>"). */
ProtobufCMessage *eellm_textpb_parse(const char *text, size_t len,
                                     const ProtobufCMessageDescriptor *desc, const char *filename,
                                     struct eellm_textpb_locs *locs, char *err, size_t errlen);

/* Prints msg in canonical text format: 2-space indent, fields in field-number
 * order, only the fields that protobuf_c_message_pack would encode. Returns 0,
 * or -1 if writing failed. */
int eellm_textpb_print(FILE *out, const ProtobufCMessage *msg);

/* Where field f of msg keeps its values, and how many there are: a repeated
 * field's array and count, or the singular member itself and 1 (set or not). */
static inline const void *eellm_pb_values(const ProtobufCMessage *msg,
                                          const ProtobufCFieldDescriptor *f, size_t *n) {
  const char *member = (const char *)msg + f->offset;
  if (f->label != PROTOBUF_C_LABEL_REPEATED) {
    *n = 1;
    return member;
  }
  *n = *(const size_t *)((const char *)msg + f->quantifier_offset);
  return *(const char *const *)member;
}

/* "A, B or C": the names of an enum's values, for messages (cut to size). */
void eellm_textpb_enum_names(char *buf, size_t size, const ProtobufCEnumDescriptor *ed);

#endif
