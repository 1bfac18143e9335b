#include "runtime/outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void release(struct eellm_outfile *f) {
  free(f->path);
  free(f->tmp);
  f->fp = NULL;
  f->path = f->tmp = NULL;
}

static char *dir_of(const char *path) {
  char *copy = strdup(path);
  if (!copy) return NULL;
  char *dir = strdup(dirname(copy));
  free(copy);
  return dir;
}

int eellm_outfile_open(struct eellm_outfile *f, const char *path, char *err, size_t errlen) {
  char *dir = dir_of(path);
  size_t tmp_size = (dir ? strlen(dir) : 0) + strlen(path) + 16;
  f->path = strdup(path);
  f->tmp = malloc(tmp_size);
  if (!dir || !f->path || !f->tmp) {
    snprintf(err, errlen, "%s: out of memory", path);
    free(dir);
    release(f);
    return -1;
  }
  char *name_copy = strdup(path); /* basename may modify its argument */
  snprintf(f->tmp, tmp_size, "%s/.%s.XXXXXX", dir, name_copy ? basename(name_copy) : "out");
  free(name_copy);
  free(dir);
  int fd = mkstemp(f->tmp);
  if (fd < 0) {
    snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    release(f);
    return -1;
  }
  mode_t mask = umask(0); /* mkstemp makes 0600; give the file the usual permissions */
  umask(mask);
  fchmod(fd, 0666 & ~mask);
  f->fp = fdopen(fd, "wb");
  if (!f->fp) {
    snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    close(fd);
    unlink(f->tmp);
    release(f);
    return -1;
  }
  return 0;
}

/* Makes the rename durable; best effort, as not every file system can sync a directory. */
static void sync_dir_of(const char *path) {
  char *dir = dir_of(path);
  int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY) : -1;
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
}

int eellm_outfile_commit(struct eellm_outfile *f, char *err, size_t errlen) {
  int ok = !ferror(f->fp) && fflush(f->fp) == 0 && fsync(fileno(f->fp)) == 0;
  int why = ok ? 0 : errno;
  if (fclose(f->fp) != 0 && ok) ok = 0, why = errno;
  if (ok && rename(f->tmp, f->path) != 0) ok = 0, why = errno;
  if (!ok) {
    snprintf(err, errlen, "%s: cannot write: %s", f->path, strerror(why));
    unlink(f->tmp);
    release(f);
    return -1;
  }
  sync_dir_of(f->path);
  release(f);
  return 0;
}

void eellm_outfile_abort(struct eellm_outfile *f) {
  if (f->fp) fclose(f->fp);
  unlink(f->tmp);
  release(f);
}
