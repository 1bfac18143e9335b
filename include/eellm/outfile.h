/* Atomic output files: the content goes to a temporary file in the target's
 * directory, which commit flushes, fsyncs and renames over the target, then
 * fsyncs the directory. A reader, or a run that fails half-way, never sees a
 * partial file, and a failed run leaves the old file in place. The temporary
 * file, PATH.tmp.<pid>.<n>, is created exclusively, so writers in one process or
 * several never share one, and it is removed on every failure. A process killed
 * mid-write leaves its temporary file behind: open removes those of processes
 * that no longer exist (kill(pid, 0) fails with ESRCH), never a live one's. */
#ifndef EELLM_OUTFILE_H
#define EELLM_OUTFILE_H

#include "eellm/api.h"

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct eellm_outfile {
  FILE *fp;   /* write the content here */
  char *path; /* the target */
  char *tmp;  /* the temporary file */
};

/* Creates the temporary file. 0, or -1 with "PATH: why" in err (when err is not
 * NULL) and the cause in errno, for callers that word their own message. */
EELLM_API int eellm_outfile_open(struct eellm_outfile *f, const char *path, char *err,
                                 size_t errlen);
/* Removes PATH.tmp.<pid>.<n> files next to path whose process is gone (not
 * this process's, not a live one's; regular files only). Returns how many. The
 * pid is checked on this machine: on a file system shared between machines,
 * call it only where the writers run. */
EELLM_API long eellm_outfile_remove_stale(const char *path);
/* Flushes, fsyncs and renames over the target, then fsyncs its directory. A
 * stream whose error flag is set (a write failed) is not committed. On failure
 * before the rename the temporary file is removed and the target is untouched.
 * Either way f is closed. 0, or -1 as for open. */
EELLM_API int eellm_outfile_commit(struct eellm_outfile *f, char *err, size_t errlen);
/* Removes the temporary file and closes f (nothing, for a zeroed or released
 * f); the target is untouched and errno keeps its value. */
EELLM_API void eellm_outfile_abort(struct eellm_outfile *f);

#ifdef __cplusplus
}
#endif
#endif
