#include "eellm/outfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Room for ".tmp.<pid>.<n>" and the NUL after the target's path. */
#define TMP_SUFFIX_SIZE 48

static void release(struct eellm_outfile *f) {
  free(f->path);
  free(f->tmp);
  f->fp = NULL;
  f->path = f->tmp = NULL;
}

/* Reports why (an errno value) in err and errno, releases f and returns -1. */
static int fail(struct eellm_outfile *f, const char *path, const char *what, int why, char *err,
                size_t errlen) {
  if (err && errlen) snprintf(err, errlen, "%s: %s: %s", path, what, strerror(why));
  release(f);
  errno = why;
  return -1;
}

/* Creates f->tmp exclusively with mode 0666 less the umask; the fd, or -1 with errno. */
static int create_temp(struct eellm_outfile *f, size_t tmp_size) {
  static atomic_uint counter;
  for (int attempt = 0; attempt < 1000; attempt++) {
    snprintf(f->tmp, tmp_size, "%s.tmp.%ld.%u", f->path, (long)getpid(),
             atomic_fetch_add(&counter, 1));
    int fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  return -1;
}

/* The pid of "<base>.tmp.<pid>.<n>", or 0 if name is not of that form. */
static long temp_owner(const char *name, const char *base) {
  size_t len = strlen(base);
  if (strncmp(name, base, len) != 0 || strncmp(name + len, ".tmp.", 5) != 0) return 0;
  const char *p = name + len + 5, *digits = p;
  long pid = 0;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (pid > 100000000L) return 0;
    pid = pid * 10 + (*p - '0');
  }
  if (p == digits || *p++ != '.' || !(*p >= '0' && *p <= '9')) return 0;
  while (*p >= '0' && *p <= '9') p++;
  return *p ? 0 : pid;
}

long eellm_outfile_remove_stale(const char *path) {
  char *dir_copy = strdup(path), *base_copy = strdup(path);
  long removed = 0;
  DIR *d = dir_copy && base_copy ? opendir(dirname(dir_copy)) : NULL;
  const char *base = d ? basename(base_copy) : NULL;
  for (struct dirent *e; d && (e = readdir(d));) {
    long pid = temp_owner(e->d_name, base);
    if (pid <= 0 || pid == (long)getpid()) continue;
    /* Only a process that is gone: a live one (or one we may not signal) may be writing. */
    if (!(kill((pid_t)pid, 0) == -1 && errno == ESRCH)) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    if (unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
  }
  if (d) closedir(d);
  free(dir_copy);
  free(base_copy);
  return removed;
}

int eellm_outfile_open(struct eellm_outfile *f, const char *path, char *err, size_t errlen) {
  size_t tmp_size = strlen(path) + TMP_SUFFIX_SIZE;
  f->fp = NULL;
  f->path = strdup(path);
  f->tmp = malloc(tmp_size);
  if (!f->path || !f->tmp) return fail(f, path, "cannot create", ENOMEM, err, errlen);
  int saved = errno;
  eellm_outfile_remove_stale(path);
  errno = saved;
  int fd = create_temp(f, tmp_size);
  if (fd < 0) return fail(f, path, "cannot create", errno, err, errlen);
  f->fp = fdopen(fd, "wb");
  if (!f->fp) {
    int why = errno;
    close(fd);
    unlink(f->tmp);
    return fail(f, path, "cannot create", why, err, errlen);
  }
  return 0;
}

/* Makes the rename durable. 0, or an errno value; a file system that cannot
 * sync a directory (EINVAL) counts as success. */
static int sync_dir_of(const char *path) {
  char *copy = strdup(path);
  if (!copy) return ENOMEM;
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int why = fd < 0 || (fsync(fd) != 0 && errno != EINVAL) ? errno : 0;
  if (fd >= 0) close(fd);
  free(copy);
  return why;
}

int eellm_outfile_commit(struct eellm_outfile *f, char *err, size_t errlen) {
  int ok = !ferror(f->fp) && fflush(f->fp) == 0 && fsync(fileno(f->fp)) == 0;
  int why = ok ? 0 : errno ? errno : EIO; /* ferror's cause may be gone from errno */
  if (fclose(f->fp) != 0 && ok) ok = 0, why = errno;
  f->fp = NULL;
  if (ok && rename(f->tmp, f->path) != 0) ok = 0, why = errno;
  if (!ok) {
    unlink(f->tmp);
    return fail(f, f->path, "cannot write", why, err, errlen);
  }
  why = sync_dir_of(f->path);
  if (why) return fail(f, f->path, "written, but syncing its directory failed", why, err, errlen);
  release(f);
  return 0;
}

void eellm_outfile_abort(struct eellm_outfile *f) {
  int saved = errno;
  if (f->fp) fclose(f->fp);
  if (f->tmp) unlink(f->tmp);
  release(f);
  errno = saved;
}
