/* Protobuf text format parser and printer driven by protobuf-c descriptors.
 *
 * Parsing builds the message in place: every allocation (sub-message, string,
 * repeated array) is attached to the tree as soon as it exists, so on any error
 * protobuf_c_message_free_unpacked on the root frees everything. */
#include "runtime/io/textpb.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { MAX_DEPTH = 64, MAX_NAME = 128, MAX_NUMBER = 64, CLIP = 40 };

enum tok_kind { TOK_EOF, TOK_IDENT, TOK_NUMBER, TOK_STRING, TOK_SYMBOL, TOK_ERROR };

struct token {
  enum tok_kind kind;
  const char *s;
  size_t len;
  int line, col;
};

struct parser {
  const char *pos, *end;
  const char *line_start;
  int line;
  struct token tok; /* lookahead */
  const char *filename;
  struct eellm_textpb_locs *locs;
  char *err;
  size_t errlen;
  int failed;
};

/* A scalar value as written: an optional '-' and one token. */
struct scalar {
  int neg;
  struct token tok;
  const char *start;
  int line, col;
};

union value {
  int32_t i32;
  uint32_t u32;
  int64_t i64;
  uint64_t u64;
  float f32;
  double f64;
  protobuf_c_boolean b;
  int e;
  char *str;
  ProtobufCBinaryData bytes;
  ProtobufCMessage *msg;
};

/* ---- errors ------------------------------------------------------------- */

static int fail_at(struct parser *p, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_at(struct parser *p, int line, int col, const char *fmt, ...) {
  if (p->failed) return -1;
  p->failed = 1;
  if (!p->err || p->errlen == 0) return -1;
  int n = snprintf(p->err, p->errlen, "%s:%d:%d: ", p->filename, line, col);
  if (n >= 0 && (size_t)n < p->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int fail_oom(struct parser *p) {
  return fail_at(p, p->tok.line, p->tok.col, "out of memory");
}

/* Copies s[0..len) into buf for a message: at most CLIP bytes, others escaped. */
static void clip(char *buf, size_t size, const char *s, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 8 < size; i++) {
    if (i == CLIP) {
      memcpy(buf + o, "...", 3);
      o += 3;
      break;
    }
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f) buf[o++] = (char)c;
    else o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
  }
  buf[o] = '\0';
}

/* "'text'" of the span [start, end), or "end of file" when empty. */
static void found_text(char *buf, size_t size, const char *start, const char *end) {
  if (start == end) {
    snprintf(buf, size, "end of file");
    return;
  }
  char clipped[CLIP * 4 + 8];
  clip(clipped, sizeof clipped, start, (size_t)(end - start));
  snprintf(buf, size, "'%s'", clipped);
}

static int fail_token(struct parser *p, const char *expected) {
  char found[CLIP * 4 + 16];
  found_text(found, sizeof found, p->tok.s, p->tok.s + p->tok.len);
  return fail_at(p, p->tok.line, p->tok.col, "expected %s, found %s", expected, found);
}

static int fail_value(struct parser *p, const ProtobufCMessageDescriptor *md,
                      const ProtobufCFieldDescriptor *f, const char *expected,
                      const struct scalar *s) {
  char found[CLIP * 4 + 16];
  found_text(found, sizeof found, s->start, s->tok.s + s->tok.len);
  return fail_at(p, s->line, s->col, "field '%s' of %s: expected %s, found %s", f->name, md->name,
                 expected, found);
}

/* ---- lexer -------------------------------------------------------------- */

static int is_ident_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_ident_char(char c) { return is_ident_start(c) || is_digit(c); }

static void skip_space_and_comments(struct parser *p) {
  while (p->pos < p->end) {
    char c = *p->pos;
    if (c == '#') {
      while (p->pos < p->end && *p->pos != '\n') p->pos++;
    } else if (c == '\n') {
      p->pos++;
      p->line++;
      p->line_start = p->pos;
    } else if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
      p->pos++;
    } else {
      return;
    }
  }
}

/* Digits, letters, '.', and a sign right after the exponent of a decimal number. */
static const char *number_end(const char *s, const char *end) {
  int hex = end - s > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
  const char *q = s;
  while (q < end) {
    if (is_ident_char(*q) || *q == '.') q++;
    else if ((*q == '+' || *q == '-') && !hex && (q[-1] == 'e' || q[-1] == 'E')) q++;
    else break;
  }
  return q;
}

/* End of the string starting at s (after its closing quote), or NULL if unterminated. */
static const char *string_end(const char *s, const char *end) {
  char quote = *s;
  for (const char *q = s + 1; q < end && *q != '\n'; q++) {
    if (*q == quote) return q + 1;
    if (*q == '\\') q++;
  }
  return NULL;
}

static void advance(struct parser *p) {
  if (p->tok.kind == TOK_ERROR) return;
  skip_space_and_comments(p);
  struct token t = {TOK_EOF, p->pos, 0, p->line, (int)(p->pos - p->line_start) + 1};
  const char *s = p->pos, *e = s;
  if (s == p->end) {
    p->tok = t;
    return;
  }
  if (is_ident_start(*s)) {
    while (e < p->end && is_ident_char(*e)) e++;
    t.kind = TOK_IDENT;
  } else if (is_digit(*s) || (*s == '.' && s + 1 < p->end && is_digit(s[1]))) {
    e = number_end(s, p->end);
    t.kind = TOK_NUMBER;
  } else if (*s == '"' || *s == '\'') {
    e = string_end(s, p->end);
    if (!e) {
      fail_at(p, t.line, t.col, "unterminated string");
      t.kind = TOK_ERROR;
      e = s;
    } else {
      t.kind = TOK_STRING;
    }
  } else if (*s && strchr("{}<>[]:,;-", *s)) {
    e = s + 1;
    t.kind = TOK_SYMBOL;
  } else {
    char shown[16];
    clip(shown, sizeof shown, s, 1);
    fail_at(p, t.line, t.col, "unexpected character '%s'", shown);
    t.kind = TOK_ERROR;
  }
  t.len = (size_t)(e - s);
  p->pos = e;
  p->tok = t;
}

static int is_sym(const struct parser *p, char c) {
  return p->tok.kind == TOK_SYMBOL && p->tok.s[0] == c;
}

static int accept(struct parser *p, char c) {
  if (!is_sym(p, c)) return 0;
  advance(p);
  return 1;
}

static void take_scalar(struct parser *p, struct scalar *s) {
  s->start = p->tok.s;
  s->line = p->tok.line;
  s->col = p->tok.col;
  s->neg = accept(p, '-');
  s->tok = p->tok;
  advance(p);
}

/* Copies an identifier or number token into buf; 0 if it does not fit. */
static int token_cstr(const struct token *t, char *buf, size_t size) {
  if (t->len >= size) return 0;
  memcpy(buf, t->s, t->len);
  buf[t->len] = '\0';
  return 1;
}

/* ---- message storage ---------------------------------------------------- */

static void *member(ProtobufCMessage *msg, unsigned offset) { return (char *)msg + offset; }

static size_t value_size(ProtobufCType type) {
  switch (type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32: return sizeof(int32_t);
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: return sizeof(int64_t);
  case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
  case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_ENUM: return sizeof(int);
  case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
  }
  return 0;
}

/* Stores *value into field f (appending if repeated, setting has_ if it has one).
 * The array's capacity is the power of two at or above its count. */
static int store_value(struct parser *p, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                       const union value *value) {
  size_t size = value_size(f->type);
  if (f->label != PROTOBUF_C_LABEL_REPEATED) {
    memcpy(member(msg, f->offset), value, size);
    int has_flag = f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
                   f->type != PROTOBUF_C_TYPE_MESSAGE;
    if (has_flag) *(protobuf_c_boolean *)member(msg, f->quantifier_offset) = 1;
    return 0;
  }
  size_t *n = member(msg, f->quantifier_offset);
  char **array = member(msg, f->offset);
  if ((*n & (*n - 1)) == 0) { /* full: 0, 1, 2, 4, ... */
    char *grown = realloc(*array, (*n ? 2 * *n : 1) * size);
    if (!grown) return fail_oom(p);
    *array = grown;
  }
  memcpy(*array + *n * size, value, size);
  (*n)++;
  return 0;
}

static int record_loc(struct parser *p, const ProtobufCMessage *msg,
                      const ProtobufCFieldDescriptor *f, int line, int col) {
  struct eellm_textpb_locs *locs = p->locs;
  if (!locs) return 0;
  if (locs->n == locs->cap) {
    size_t cap = locs->cap ? 2 * locs->cap : 32;
    struct eellm_textpb_loc *grown = realloc(locs->v, cap * sizeof *grown);
    if (!grown) return fail_oom(p);
    locs->v = grown;
    locs->cap = cap;
  }
  unsigned index = 0;
  if (f->label == PROTOBUF_C_LABEL_REPEATED)
    index = (unsigned)*(const size_t *)((const char *)msg + f->quantifier_offset) - 1;
  locs->v[locs->n++] = (struct eellm_textpb_loc){msg, f, index, line, col};
  return 0;
}

/* ---- scalar values ------------------------------------------------------ */

/* 0: *out holds the integer literal t; 1: not an integer literal; 2: too large. */
static int parse_magnitude(const struct token *t, uint64_t *out) {
  char buf[MAX_NUMBER];
  if (t->kind != TOK_NUMBER) return 1;
  if (!token_cstr(t, buf, sizeof buf)) {
    for (size_t i = 0; i < t->len; i++)
      if (!is_digit(t->s[i])) return 1;
    return 2;
  }
  char *end;
  errno = 0;
  unsigned long long v = strtoull(buf, &end, 0);
  if (*end != '\0') return 1;
  if (errno == ERANGE) return 2;
  *out = v;
  return 0;
}

static const char *type_name(ProtobufCType type) {
  static const char *const names[] = {
      [PROTOBUF_C_TYPE_INT32] = "int32",       [PROTOBUF_C_TYPE_SINT32] = "sint32",
      [PROTOBUF_C_TYPE_SFIXED32] = "sfixed32", [PROTOBUF_C_TYPE_INT64] = "int64",
      [PROTOBUF_C_TYPE_SINT64] = "sint64",     [PROTOBUF_C_TYPE_SFIXED64] = "sfixed64",
      [PROTOBUF_C_TYPE_UINT32] = "uint32",     [PROTOBUF_C_TYPE_FIXED32] = "fixed32",
      [PROTOBUF_C_TYPE_UINT64] = "uint64",     [PROTOBUF_C_TYPE_FIXED64] = "fixed64",
      [PROTOBUF_C_TYPE_FLOAT] = "float",       [PROTOBUF_C_TYPE_DOUBLE] = "double",
      [PROTOBUF_C_TYPE_BOOL] = "bool",         [PROTOBUF_C_TYPE_ENUM] = "enum",
      [PROTOBUF_C_TYPE_STRING] = "string",     [PROTOBUF_C_TYPE_BYTES] = "bytes",
      [PROTOBUF_C_TYPE_MESSAGE] = "message"};
  return names[type];
}

static int is_unsigned(ProtobufCType type) {
  return type == PROTOBUF_C_TYPE_UINT32 || type == PROTOBUF_C_TYPE_FIXED32 ||
         type == PROTOBUF_C_TYPE_UINT64 || type == PROTOBUF_C_TYPE_FIXED64;
}

static int is_64bit(ProtobufCType type) { return value_size(type) == sizeof(int64_t); }

static int read_integer(struct parser *p, const ProtobufCMessageDescriptor *md,
                        const ProtobufCFieldDescriptor *f, const struct scalar *s,
                        union value *v) {
  int unsigned_type = is_unsigned(f->type);
  uint64_t magnitude = 0;
  int status = parse_magnitude(&s->tok, &magnitude);
  if (status == 1 || (s->neg && unsigned_type))
    return fail_value(p, md, f, unsigned_type ? "an unsigned integer" : "an integer", s);
  uint64_t limit = is_64bit(f->type) ? UINT64_MAX : UINT32_MAX;
  if (!unsigned_type) limit = limit / 2 + (uint64_t)s->neg; /* 2^(b-1) - 1, or 2^(b-1) below 0 */
  if (status == 2 || magnitude > limit) {
    char shown[CLIP * 4 + 8];
    clip(shown, sizeof shown, s->start, (size_t)(s->tok.s + s->tok.len - s->start));
    return fail_at(p, s->line, s->col, "value %s out of range for %s field '%s'", shown,
                   type_name(f->type), f->name);
  }
  uint64_t bits = s->neg ? 0 - magnitude : magnitude; /* two's complement */
  if (is_64bit(f->type)) v->u64 = bits;
  else v->u32 = (uint32_t)bits;
  return 0;
}

static int read_floating(struct parser *p, const ProtobufCMessageDescriptor *md,
                         const ProtobufCFieldDescriptor *f, const struct scalar *s,
                         union value *v) {
  char buf[MAX_NUMBER];
  double d;
  uint64_t magnitude;
  if (s->tok.kind == TOK_IDENT && token_cstr(&s->tok, buf, sizeof buf) &&
      (!strcasecmp(buf, "inf") || !strcasecmp(buf, "infinity"))) {
    d = INFINITY;
  } else if (s->tok.kind == TOK_IDENT && token_cstr(&s->tok, buf, sizeof buf) &&
             !strcasecmp(buf, "nan")) {
    d = NAN;
  } else if (parse_magnitude(&s->tok, &magnitude) == 0) { /* 0x10 and 010 as protoc reads them */
    d = (double)magnitude;
  } else if (s->tok.kind == TOK_NUMBER && token_cstr(&s->tok, buf, sizeof buf)) {
    size_t len = strlen(buf);
    if (buf[len - 1] == 'f' || buf[len - 1] == 'F') buf[len - 1] = '\0';
    char *end;
    errno = 0;
    d = strtod(buf, &end);
    if (*end != '\0' || buf[0] == '\0' || strpbrk(buf, "xXpP"))
      return fail_value(p, md, f, "a number", s);
    if (errno == ERANGE && fabs(d) > 1) goto out_of_range;
  } else {
    return fail_value(p, md, f, "a number", s);
  }
  if (s->neg) d = -d;
  if (f->type == PROTOBUF_C_TYPE_DOUBLE) {
    v->f64 = d;
    return 0;
  }
  v->f32 = (float)d;
  if (isinf(v->f32) && !isinf(d)) goto out_of_range;
  return 0;
out_of_range:;
  char shown[CLIP * 4 + 8];
  clip(shown, sizeof shown, s->start, (size_t)(s->tok.s + s->tok.len - s->start));
  return fail_at(p, s->line, s->col, "value %s out of range for %s field '%s'", shown,
                 type_name(f->type), f->name);
}

static int read_bool(struct parser *p, const ProtobufCMessageDescriptor *md,
                     const ProtobufCFieldDescriptor *f, const struct scalar *s,
                     union value *v) {
  static const char *const names[] = {"false", "False", "f", "true", "True", "t"};
  uint64_t number;
  if (!s->neg && parse_magnitude(&s->tok, &number) == 0 && number <= 1) {
    v->b = (protobuf_c_boolean)number;
    return 0;
  }
  for (int i = 0; i < 6 && !s->neg && s->tok.kind == TOK_IDENT; i++) {
    if (strlen(names[i]) == s->tok.len && !memcmp(names[i], s->tok.s, s->tok.len)) {
      v->b = i >= 3;
      return 0;
    }
  }
  return fail_value(p, md, f, "true or false", s);
}

void eellm_textpb_enum_names(char *buf, size_t size, const ProtobufCEnumDescriptor *ed) {
  size_t o = 0;
  buf[0] = '\0';
  for (unsigned i = 0; i < ed->n_values && o < size; i++) {
    const char *sep = i == 0 ? "" : i + 1 == ed->n_values ? " or " : ", ";
    int n = snprintf(buf + o, size - o, "%s%s", sep, ed->values[i].name);
    if (n < 0) break;
    o += (size_t)n;
  }
}

static int read_enum(struct parser *p, const ProtobufCMessageDescriptor *md,
                     const ProtobufCFieldDescriptor *f, const struct scalar *s,
                     union value *v) {
  const ProtobufCEnumDescriptor *ed = f->descriptor;
  char names[512];
  eellm_textpb_enum_names(names, sizeof names, ed);
  char buf[MAX_NAME];
  uint64_t magnitude;
  if (!s->neg && s->tok.kind == TOK_IDENT) {
    const ProtobufCEnumValue *ev =
        token_cstr(&s->tok, buf, sizeof buf) ? protobuf_c_enum_descriptor_get_value_by_name(ed, buf)
                                             : NULL;
    if (ev) {
      v->e = ev->value;
      return 0;
    }
  } else if (parse_magnitude(&s->tok, &magnitude) == 0 && magnitude <= (uint64_t)INT32_MAX + s->neg) {
    int value = s->neg ? (int)(0 - (int64_t)magnitude) : (int)magnitude;
    if (protobuf_c_enum_descriptor_get_value(ed, value)) {
      v->e = value;
      return 0;
    }
  } else {
    return fail_value(p, md, f, names, s);
  }
  char shown[CLIP * 4 + 8];
  clip(shown, sizeof shown, s->start, (size_t)(s->tok.s + s->tok.len - s->start));
  return fail_at(p, s->line, s->col, "unknown enum value '%s' for field '%s' (expected %s)", shown,
                 f->name, names);
}

static int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes the escape at q (just after a backslash) into *out; returns its length, or 0 if invalid. */
static size_t decode_escape(const char *q, const char *end, unsigned char *out) {
  static const char plain[] = "n\nt\tr\ra\ab\bf\fv\v\\\\''\"\"??";
  for (const char *e = plain; *e; e += 2) {
    if (*q == e[0]) {
      *out = (unsigned char)e[1];
      return 1;
    }
  }
  size_t n = 0;
  unsigned value = 0;
  if (*q >= '0' && *q <= '7') {
    while (n < 3 && q + n < end && q[n] >= '0' && q[n] <= '7') value = value * 8 + (unsigned)(q[n++] - '0');
    if (value > 255) return 0;
  } else if (*q == 'x' || *q == 'X') {
    n = 1;
    while (n < 3 && q + n < end && hex_value(q[n]) >= 0) value = value * 16 + (unsigned)hex_value(q[n++]);
    if (n == 1) return 0;
  }
  *out = (unsigned char)value;
  return n;
}

/* Appends the bytes of string token t (escapes decoded) to buf[*len..]; buf has room for t->len more. */
static int decode_string(struct parser *p, const struct token *t, unsigned char *buf, size_t *len) {
  const char *end = t->s + t->len - 1; /* closing quote */
  for (const char *q = t->s + 1; q < end; q++) {
    if (*q != '\\') {
      buf[(*len)++] = (unsigned char)*q;
      continue;
    }
    size_t n = decode_escape(q + 1, end, &buf[*len]);
    if (n == 0) {
      char shown[CLIP * 4 + 8];
      clip(shown, sizeof shown, q, q + 2 <= end ? 2 : 1);
      return fail_at(p, t->line, t->col + (int)(q - t->s), "invalid escape '%s' in string", shown);
    }
    (*len)++;
    q += n;
  }
  return 0;
}

/* One string token, then any adjacent ones, concatenated into a malloc'd buffer. */
static int read_string(struct parser *p, const ProtobufCMessageDescriptor *md,
                       const ProtobufCFieldDescriptor *f, const struct scalar *s,
                       union value *v) {
  if (s->neg || s->tok.kind != TOK_STRING) return fail_value(p, md, f, "a string", s);
  size_t cap = s->tok.len + 1, len = 0;
  unsigned char *buf = malloc(cap);
  if (!buf) return fail_oom(p);
  int rc = decode_string(p, &s->tok, buf, &len);
  while (rc == 0 && p->tok.kind == TOK_STRING) {
    unsigned char *grown = realloc(buf, cap + p->tok.len);
    if (!grown) {
      rc = fail_oom(p);
      break;
    }
    buf = grown;
    cap += p->tok.len;
    rc = decode_string(p, &p->tok, buf, &len);
    advance(p);
  }
  if (rc == 0 && f->type == PROTOBUF_C_TYPE_STRING && memchr(buf, '\0', len))
    rc = fail_at(p, s->line, s->col, "string field '%s' cannot hold a NUL byte", f->name);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[len] = '\0';
  if (f->type == PROTOBUF_C_TYPE_STRING) v->str = (char *)buf;
  else v->bytes = (ProtobufCBinaryData){len, buf};
  return 0;
}

static int read_scalar(struct parser *p, const ProtobufCMessageDescriptor *md,
                       const ProtobufCFieldDescriptor *f, const struct scalar *s,
                       union value *v) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_DOUBLE: return read_floating(p, md, f, s, v);
  case PROTOBUF_C_TYPE_BOOL: return read_bool(p, md, f, s, v);
  case PROTOBUF_C_TYPE_ENUM: return read_enum(p, md, f, s, v);
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_BYTES: return read_string(p, md, f, s, v);
  case PROTOBUF_C_TYPE_MESSAGE: return -1; /* not a scalar */
  default: return read_integer(p, md, f, s, v);
  }
}

static void free_value(const ProtobufCFieldDescriptor *f, union value *v) {
  if (f->type == PROTOBUF_C_TYPE_STRING) free(v->str);
  if (f->type == PROTOBUF_C_TYPE_BYTES) free(v->bytes.data);
}

/* ---- fields and messages ------------------------------------------------ */

static int parse_scalar_value(struct parser *p, ProtobufCMessage *msg,
                              const ProtobufCFieldDescriptor *f, int line, int col) {
  struct scalar s;
  union value v;
  take_scalar(p, &s);
  if (read_scalar(p, msg->descriptor, f, &s, &v)) return -1;
  if (store_value(p, msg, f, &v)) {
    free_value(f, &v);
    return -1;
  }
  return record_loc(p, msg, f, line, col);
}

/* Calls parse_one(p, msg, f, line, col, depth) for each element of `[a, b, ...]`. */
static int parse_list(struct parser *p, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                      int depth,
                      int (*parse_one)(struct parser *, ProtobufCMessage *,
                                       const ProtobufCFieldDescriptor *, int, int, int)) {
  const struct token open = p->tok;
  if (f->label != PROTOBUF_C_LABEL_REPEATED)
    return fail_at(p, open.line, open.col, "field '%s' of %s is not repeated: a list '[...]' is not allowed",
                   f->name, msg->descriptor->name);
  advance(p);
  if (accept(p, ']')) return 0;
  for (;;) {
    if (parse_one(p, msg, f, p->tok.line, p->tok.col, depth)) return -1;
    if (accept(p, ']')) return 0;
    if (!accept(p, ',')) return fail_token(p, "',' or ']' in the list");
  }
}

static int scalar_element(struct parser *p, ProtobufCMessage *msg,
                          const ProtobufCFieldDescriptor *f, int line, int col, int depth) {
  (void)depth;
  return parse_scalar_value(p, msg, f, line, col);
}

static int parse_scalar_field(struct parser *p, ProtobufCMessage *msg,
                              const ProtobufCFieldDescriptor *f, const struct token *name) {
  if (!accept(p, ':')) {
    char expected[MAX_NAME + 64];
    snprintf(expected, sizeof expected, "':' after field name '%s'", f->name);
    return fail_token(p, expected);
  }
  if (is_sym(p, '[')) return parse_list(p, msg, f, 0, scalar_element);
  return parse_scalar_value(p, msg, f, name->line, name->col);
}

static int parse_fields(struct parser *p, ProtobufCMessage *msg, const struct token *open,
                        const ProtobufCFieldDescriptor *of, int depth);

/* A sub-message `{ ... }` or `< ... >` of field f, attached to msg before it is filled. */
static int parse_message_value(struct parser *p, ProtobufCMessage *msg,
                               const ProtobufCFieldDescriptor *f, int line, int col, int depth) {
  if (!is_sym(p, '{') && !is_sym(p, '<')) {
    char expected[MAX_NAME + 64];
    snprintf(expected, sizeof expected, "'{' to start field '%s' of %s", f->name,
             msg->descriptor->name);
    return fail_token(p, expected);
  }
  if (depth >= MAX_DEPTH) return fail_at(p, line, col, "messages nested more than %d deep", MAX_DEPTH);
  const ProtobufCMessageDescriptor *sub_desc = f->descriptor;
  union value v;
  v.msg = malloc(sub_desc->sizeof_message);
  if (!v.msg) return fail_oom(p);
  protobuf_c_message_init(sub_desc, v.msg);
  if (store_value(p, msg, f, &v)) {
    free(v.msg);
    return -1;
  }
  if (record_loc(p, msg, f, line, col)) return -1;
  const struct token open = p->tok;
  advance(p);
  return parse_fields(p, v.msg, &open, f, depth + 1);
}

static int parse_message_field(struct parser *p, ProtobufCMessage *msg,
                               const ProtobufCFieldDescriptor *f, const struct token *name,
                               int depth) {
  accept(p, ':');
  if (is_sym(p, '[')) return parse_list(p, msg, f, depth, parse_message_value);
  return parse_message_value(p, msg, f, name->line, name->col, depth);
}

static int parse_field(struct parser *p, ProtobufCMessage *msg, unsigned char *seen, char close,
                       int depth) {
  const ProtobufCMessageDescriptor *md = msg->descriptor;
  const struct token name = p->tok;
  if (name.kind != TOK_IDENT)
    return fail_token(p, close == '}' ? "a field name or '}'" : close == '>' ? "a field name or '>'" : "a field name");
  char buf[MAX_NAME];
  const ProtobufCFieldDescriptor *f =
      token_cstr(&name, buf, sizeof buf) ? protobuf_c_message_descriptor_get_field_by_name(md, buf) : NULL;
  if (!f) {
    char shown[CLIP * 4 + 8];
    clip(shown, sizeof shown, name.s, name.len);
    return fail_at(p, name.line, name.col, "unknown field '%s' in %s", shown, md->name);
  }
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    return fail_at(p, name.line, name.col, "field '%s' of %s is in a oneof, which is not supported",
                   f->name, md->name);
  size_t i = (size_t)(f - md->fields);
  if (f->label != PROTOBUF_C_LABEL_REPEATED && seen[i])
    return fail_at(p, name.line, name.col, "field '%s' of %s given twice", f->name, md->name);
  seen[i] = 1;
  advance(p);
  int rc = f->type == PROTOBUF_C_TYPE_MESSAGE ? parse_message_field(p, msg, f, &name, depth)
                                              : parse_scalar_field(p, msg, f, &name);
  if (rc == 0 && !accept(p, ',')) accept(p, ';');
  return rc;
}

static int check_required(struct parser *p, const ProtobufCMessage *msg, const unsigned char *seen) {
  const ProtobufCMessageDescriptor *md = msg->descriptor;
  for (unsigned i = 0; i < md->n_fields; i++)
    if (md->fields[i].label == PROTOBUF_C_LABEL_REQUIRED && !seen[i])
      return fail_at(p, p->tok.line, p->tok.col, "missing required field '%s' in %s",
                     md->fields[i].name, md->name);
  return 0;
}

/* Fields of msg up to the brace matching `open` (of field `of`), or to the end at top level. */
static int parse_fields(struct parser *p, ProtobufCMessage *msg, const struct token *open,
                        const ProtobufCFieldDescriptor *of, int depth) {
  char close = !open ? '\0' : open->s[0] == '{' ? '}' : '>';
  unsigned char *seen = calloc(msg->descriptor->n_fields + 1, 1);
  if (!seen) return fail_oom(p);
  int rc = 0;
  while (rc == 0 && !(close && is_sym(p, close))) {
    if (p->tok.kind == TOK_EOF && !close) break;
    if (p->tok.kind == TOK_EOF)
      rc = fail_at(p, open->line, open->col, "'%c' of field '%s' is never closed", open->s[0],
                   of->name);
    else
      rc = parse_field(p, msg, seen, close, depth);
  }
  if (rc == 0) rc = check_required(p, msg, seen);
  free(seen);
  if (rc == 0 && close) advance(p);
  return rc;
}

ProtobufCMessage *eellm_textpb_parse(const char *text, size_t len,
                                     const ProtobufCMessageDescriptor *desc, const char *filename,
                                     struct eellm_textpb_locs *locs, char *err, size_t errlen) {
  struct parser p = {.pos = text,
                     .end = text + len,
                     .line_start = text,
                     .line = 1,
                     .filename = filename ? filename : "<text>",
                     .locs = locs,
                     .err = err,
                     .errlen = errlen};
  size_t locs_before = locs ? locs->n : 0;
  advance(&p);
  ProtobufCMessage *msg = malloc(desc->sizeof_message);
  if (!msg) {
    fail_oom(&p);
    return NULL;
  }
  protobuf_c_message_init(desc, msg);
  if (parse_fields(&p, msg, NULL, NULL, 0) == 0) return msg;
  protobuf_c_message_free_unpacked(msg, NULL);
  if (locs) locs->n = locs_before;
  return NULL;
}

/* ---- locations ---------------------------------------------------------- */

void eellm_textpb_locs_free(struct eellm_textpb_locs *locs) {
  free(locs->v);
  *locs = (struct eellm_textpb_locs){0};
}

const struct eellm_textpb_loc *eellm_textpb_where(const struct eellm_textpb_locs *locs,
                                                  const ProtobufCMessage *msg, const char *name,
                                                  unsigned index) {
  const ProtobufCFieldDescriptor *f =
      protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
  for (size_t i = 0; f && locs && i < locs->n; i++)
    if (locs->v[i].msg == msg && locs->v[i].field == f && locs->v[i].index == index)
      return &locs->v[i];
  return NULL;
}

/* ---- printer ------------------------------------------------------------ */

/* Whether protobuf_c_message_pack encodes the non-repeated field f of msg. */
static int is_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  const char *m = (const char *)msg + f->offset;
  int pointer = f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE;
  switch (f->label) {
  case PROTOBUF_C_LABEL_REQUIRED: return 1;
  case PROTOBUF_C_LABEL_OPTIONAL:
    if (pointer) return *(void *const *)m && *(void *const *)m != f->default_value;
    return *(const protobuf_c_boolean *)((const char *)msg + f->quantifier_offset);
  case PROTOBUF_C_LABEL_NONE: /* proto3: present unless zero */
    if (f->type == PROTOBUF_C_TYPE_STRING) return *(char *const *)m && **(char *const *)m;
    if (f->type == PROTOBUF_C_TYPE_BYTES) return ((const ProtobufCBinaryData *)m)->len > 0;
    for (size_t i = 0; i < value_size(f->type); i++)
      if (m[i]) return 1;
    return 0;
  default: return 0;
  }
}

static void print_float(FILE *out, double v, int single) {
  if (isnan(v)) { /* keeps the sign, which "-nan" reads back with; the payload is lost */
    fputs(signbit(v) ? "-nan" : "nan", out);
    return;
  }
  if (isinf(v)) {
    fputs(v < 0 ? "-inf" : "inf", out);
    return;
  }
  char buf[40];
  /* shortest %g that reads back to the same value */
  for (int digits = single ? FLT_DIG : DBL_DIG; digits <= (single ? 9 : 17); digits++) {
    snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (single ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v) break;
  }
  fputs(buf, out);
}

static void print_bytes(FILE *out, const unsigned char *s, size_t len) {
  fputc('"', out);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = s[i];
    const char *esc = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t"
                    : c == '"' ? "\\\"" : c == '\'' ? "\\'" : c == '\\' ? "\\\\" : NULL;
    if (esc) fputs(esc, out);
    else if (c >= 0x20 && c < 0x7f) fputc(c, out);
    else fprintf(out, "\\%03o", c);
  }
  fputc('"', out);
}

static void print_scalar(FILE *out, const ProtobufCFieldDescriptor *f, const void *v) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32: fprintf(out, "%" PRId32, *(const int32_t *)v); break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32: fprintf(out, "%" PRIu32, *(const uint32_t *)v); break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64: fprintf(out, "%" PRId64, *(const int64_t *)v); break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: fprintf(out, "%" PRIu64, *(const uint64_t *)v); break;
  case PROTOBUF_C_TYPE_FLOAT: print_float(out, *(const float *)v, 1); break;
  case PROTOBUF_C_TYPE_DOUBLE: print_float(out, *(const double *)v, 0); break;
  case PROTOBUF_C_TYPE_BOOL: fputs(*(const protobuf_c_boolean *)v ? "true" : "false", out); break;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)v);
    if (ev) fputs(ev->name, out);
    else fprintf(out, "%d", *(const int *)v);
    break;
  }
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(char *const *)v;
    print_bytes(out, (const unsigned char *)s, strlen(s));
    break;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *b = v;
    print_bytes(out, b->data, b->len);
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE: break;
  }
}

static void print_message(FILE *out, const ProtobufCMessage *msg, int indent);

static void print_value(FILE *out, const ProtobufCFieldDescriptor *f, const void *v, int indent) {
  fprintf(out, "%*s%s", indent, "", f->name);
  if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    fputs(" {\n", out);
    print_message(out, *(ProtobufCMessage *const *)v, indent + 2);
    fprintf(out, "%*s}\n", indent, "");
  } else {
    fputs(": ", out);
    print_scalar(out, f, v);
    fputc('\n', out);
  }
}

static void print_message(FILE *out, const ProtobufCMessage *msg, int indent) {
  const ProtobufCMessageDescriptor *md = msg->descriptor;
  for (unsigned i = 0; i < md->n_fields; i++) { /* protoc-c lists fields by number */
    const ProtobufCFieldDescriptor *f = &md->fields[i];
    const char *m = (const char *)msg + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)((const char *)msg + f->quantifier_offset);
      const char *array = *(char *const *)m;
      for (size_t k = 0; k < n; k++) print_value(out, f, array + k * value_size(f->type), indent);
    } else if (is_present(msg, f)) {
      print_value(out, f, m, indent);
    }
  }
}

int eellm_textpb_print(FILE *out, const ProtobufCMessage *msg) {
  print_message(out, msg, 0);
  return ferror(out) ? -1 : 0;
}
