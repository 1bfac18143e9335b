/* Reading and writing spec files (eellm.Model, eellm.Train) in text or binary format. */
#ifndef EELLM_SPECIO_H
#define EELLM_SPECIO_H

#include "eellm.h"
#include "runtime/io/textpb.h"

/* Reads path: text format if it ends in .txtpb/.textproto/.txt or starts with
 * printable text, binary if .pb/.binpb. Returns NULL with a one-line error
 * (naming the file) in err: missing file, truncated or malformed binary
 * ("FILE: truncated or malformed binary eellm.Model"), text errors, or a text
 * header `# proto-message: X` naming another message than desc. locs (may be
 * NULL) receives where each field was written; binary files record none. */
ProtobufCMessage *eellm_spec_read(const char *path, const ProtobufCMessageDescriptor *desc,
                                  struct eellm_textpb_locs *locs, char *err, size_t errlen);

/* protobuf_c_message_unpack, refusing (NULL) what would not unpack again once
 * packed: protobuf-c 1.4 reads a non-minimal tag varint of field number 0
 * (0x82 0x00) as an unknown field, and writes it back as 0x02, which it refuses. */
ProtobufCMessage *eellm_spec_unpack(const ProtobufCMessageDescriptor *desc, size_t len,
                                    const uint8_t *data);

/* Writing specs (eellm_spec_write_binary, eellm_spec_write_text): eellm.h. */

/* msg in binary wire format, malloc'd (*len bytes); NULL when out of memory. */
uint8_t *eellm_spec_pack(const ProtobufCMessage *msg, size_t *len);

/* &eellm__model__descriptor or &eellm__train__descriptor, as named by the
 * `# proto-message:` header comment of text file path; NULL if it has none. */
const ProtobufCMessageDescriptor *eellm_spec_message_of(const char *path);

#endif
