/* Spec files: text or binary protobuf, read whole and written atomically. */
#include "runtime/io/specio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model.pb-c.h"
#include "eellm/outfile.h"
#include "train.pb-c.h"

/* eellm's spec messages and the schema file of each, for text headers. */
static const struct {
  const ProtobufCMessageDescriptor *desc;
  const char *proto_file;
} spec_kinds[] = {
    {&eellm__model__descriptor, "model.proto"},
    {&eellm__train__descriptor, "train.proto"},
};

static void set_error(char *err, size_t errlen, const char *path, const char *what) {
  if (err && errlen) snprintf(err, errlen, "%s: %s", path, what);
}

/* Reads the whole file into a malloc'd, NUL-terminated buffer. */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_error(err, errlen, path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *data = malloc(cap);
  while (data) {
    n += fread(data + n, 1, cap - 1 - n, f);
    if (n < cap - 1) break;
    char *grown = realloc(data, cap *= 2);
    if (!grown) free(data);
    data = grown;
  }
  int failed = !data || ferror(f);
  const char *why = !data ? "out of memory" : strerror(errno);
  fclose(f);
  if (failed) {
    set_error(err, errlen, path, why);
    free(data);
    return NULL;
  }
  data[n] = '\0';
  *len = n;
  return data;
}

static int has_suffix(const char *path, const char *suffix) {
  size_t n = strlen(path), k = strlen(suffix);
  return n >= k && strcmp(path + n - k, suffix) == 0;
}

/* Binary protobuf starts with a field tag, which is rarely printable text (UTF-8 allowed). */
static int looks_textual(const char *data, size_t len) {
  for (size_t i = 0; i < len && i < 512; i++) {
    unsigned char c = (unsigned char)data[i];
    if (c < 0x20 && c != '\n' && c != '\t' && c != '\r') return 0;
    if (c == 0x7f) return 0;
  }
  return 1;
}

static int is_text(const char *path, const char *data, size_t len) {
  if (has_suffix(path, ".txtpb") || has_suffix(path, ".textproto") || has_suffix(path, ".txt"))
    return 1;
  if (has_suffix(path, ".pb") || has_suffix(path, ".binpb")) return 0;
  return looks_textual(data, len);
}

/* Copies into name the X of a `# proto-message: X` line among the comments
 * heading text; returns 0 if there is none. */
static int header_message(const char *text, size_t len, char *name, size_t size) {
  const char *p = text, *end = text + len;
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    if (p == end || *p != '#') return 0;
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    p++;
    while (p < eol && (*p == ' ' || *p == '\t')) p++;
    static const char key[] = "proto-message:";
    if ((size_t)(eol - p) > sizeof key - 1 && !memcmp(p, key, sizeof key - 1)) {
      p += sizeof key - 1;
      while (p < eol && (*p == ' ' || *p == '\t')) p++;
      size_t n = 0;
      while (p + n < eol && p[n] != ' ' && p[n] != '\t' && p[n] != '\r') n++;
      if (n == 0 || n >= size) return 0;
      memcpy(name, p, n);
      name[n] = '\0';
      return 1;
    }
    p = eol;
  }
  return 0;
}

static ProtobufCMessage *parse_text(const char *path, const char *data, size_t len,
                                    const ProtobufCMessageDescriptor *desc,
                                    struct eellm_textpb_locs *locs, char *err, size_t errlen) {
  char named[256];
  if (header_message(data, len, named, sizeof named) && strcmp(named, desc->name) != 0) {
    char what[512];
    snprintf(what, sizeof what, "its proto-message header names %s, expected %s", named,
             desc->name);
    set_error(err, errlen, path, what);
    return NULL;
  }
  return eellm_textpb_parse(data, len, desc, path, locs, err, errlen);
}

/* Whether msg or a sub-message holds an unknown field numbered 0. */
static int has_field_zero(const ProtobufCMessage *msg) {
  for (unsigned i = 0; i < msg->n_unknown_fields; i++)
    if (msg->unknown_fields[i].tag == 0) return 1;
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    size_t n;
    const ProtobufCMessage *const *subs = eellm_pb_values(msg, f, &n);
    for (size_t k = 0; k < n; k++) {
      const ProtobufCMessage *sub = subs[k];
      if (sub && has_field_zero(sub)) return 1;
    }
  }
  return 0;
}

ProtobufCMessage *eellm_spec_unpack(const ProtobufCMessageDescriptor *desc, size_t len,
                                    const uint8_t *data) {
  ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, data);
  if (msg && has_field_zero(msg)) {
    protobuf_c_message_free_unpacked(msg, NULL);
    msg = NULL;
  }
  return msg;
}

ProtobufCMessage *eellm_spec_read(const char *path, const ProtobufCMessageDescriptor *desc,
                                  struct eellm_textpb_locs *locs, char *err, size_t errlen) {
  size_t len;
  char *data = read_file(path, &len, err, errlen);
  if (!data) return NULL;
  ProtobufCMessage *msg;
  if (is_text(path, data, len)) {
    msg = parse_text(path, data, len, desc, locs, err, errlen);
  } else {
    msg = eellm_spec_unpack(desc, len, (const uint8_t *)data);
    if (!msg) {
      char what[300];
      snprintf(what, sizeof what, "truncated or malformed binary %s", desc->name);
      set_error(err, errlen, path, what);
    }
  }
  free(data);
  return msg;
}

const ProtobufCMessageDescriptor *eellm_spec_message_of(const char *path) {
  size_t len;
  char *data = read_file(path, &len, NULL, 0);
  if (!data) return NULL;
  char named[256];
  int found = header_message(data, len, named, sizeof named);
  free(data);
  for (size_t i = 0; found && i < sizeof spec_kinds / sizeof spec_kinds[0]; i++)
    if (strcmp(named, spec_kinds[i].desc->name) == 0) return spec_kinds[i].desc;
  return NULL;
}

/* ---- writing ------------------------------------------------------------ */

uint8_t *eellm_spec_pack(const ProtobufCMessage *msg, size_t *len) {
  *len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf) protobuf_c_message_pack(msg, buf);
  return buf;
}

static int write_binary_body(FILE *out, const ProtobufCMessage *msg) {
  size_t size;
  uint8_t *buf = eellm_spec_pack(msg, &size);
  if (!buf) return -1;
  int rc = fwrite(buf, 1, size, out) == size ? 0 : -1;
  free(buf);
  return rc;
}

static int write_text_body(FILE *out, const ProtobufCMessage *msg) {
  for (size_t i = 0; i < sizeof spec_kinds / sizeof spec_kinds[0]; i++)
    if (msg->descriptor == spec_kinds[i].desc)
      fprintf(out, "# proto-file: %s\n", spec_kinds[i].proto_file);
  fprintf(out, "# proto-message: %s\n\n", msg->descriptor->name);
  return eellm_textpb_print(out, msg);
}

/* Writes msg through an atomic output file; errors read "PATH: why". */
static int write_atomically(const char *path, int (*write_body)(FILE *, const ProtobufCMessage *),
                            const ProtobufCMessage *msg, char *err, size_t errlen) {
  struct eellm_outfile out;
  errno = 0;
  int ok = eellm_outfile_open(&out, path, NULL, 0) == 0;
  if (ok && write_body(out.fp, msg) != 0) {
    ok = 0;
    eellm_outfile_abort(&out);
  } else if (ok) {
    ok = eellm_outfile_commit(&out, NULL, 0) == 0;
  }
  if (!ok) set_error(err, errlen, path, errno ? strerror(errno) : "write failed");
  return ok ? 0 : -1;
}

int eellm_spec_write_binary(const char *path, const ProtobufCMessage *msg, char *err,
                            size_t errlen) {
  return write_atomically(path, write_binary_body, msg, err, errlen);
}

int eellm_spec_write_text(const char *path, const ProtobufCMessage *msg, char *err, size_t errlen) {
  return write_atomically(path, write_text_body, msg, err, errlen);
}
