/*
 * atomic.h - internal: output files that appear complete or not at all.
 *
 * A writer opens an atomic file for a target path, writes to its fd, and
 * either commits it (the bytes replace the target) or aborts it (nothing
 * is left behind and the target is as it was). Used by both writers in
 * writer.c: bundle creation and model extraction.
 *
 * The temporary file is "TARGET.tmp.XXXXXX" in the target's directory, so
 * the final rename never crosses a filesystem. Only a process killed
 * outright (SIGKILL, power loss) can leave one behind.
 *
 * Nothing here is installed or visible outside libapbundle.
 */
#ifndef APB_CORE_ATOMIC_H
#define APB_CORE_ATOMIC_H

#include <stddef.h>

struct apb_atomic_file {
	const char *target; /* the caller's path, borrowed, used in messages */
	char *tmp;          /* "target.tmp.XXXXXX", NULL once renamed or removed */
	int fd;             /* open for writing, -1 when closed */
};

/*
 * Create the temporary file for target (O_EXCL, mode 0666 less the umask,
 * like any newly created file) and open it for writing at offset 0. On
 * failure nothing is left, af->fd is -1, and err names target. Returns 0
 * or the errno of the failing open (-ENOMEM for the name).
 */
int apb_atomic_open(struct apb_atomic_file *af, const char *target, char *err,
		    size_t err_len);

/*
 * fsync and close the file, rename it over the target, fsync the target's
 * directory. On a failure before the rename the temporary file is removed.
 * A failure of the directory fsync is reported although the target is
 * already complete and in place. Returns 0 or the failing call's errno,
 * with err naming the target.
 */
int apb_atomic_commit(struct apb_atomic_file *af, char *err, size_t err_len);

/*
 * Close and remove the temporary file. A no-op after a commit or a failed
 * open, and on a struct initialised with {.fd = -1}, so a single cleanup
 * path may always call it.
 */
void apb_atomic_abort(struct apb_atomic_file *af);

#endif
