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
 * What is already at the target decides whether it may be replaced
 * (apb_atomic_check_target): nothing, or a regular file, which the new
 * file replaces keeping its mode and, as far as the caller may, its owner
 * and group. A symbolic link, directory, FIFO, device or socket is refused
 * and left as it is: renaming over it would silently turn /dev/null or a
 * link into a regular file.
 *
 * Nothing here is installed or visible outside libapbundle.
 */
#ifndef APB_CORE_ATOMIC_H
#define APB_CORE_ATOMIC_H

#include <stddef.h>
#include <sys/stat.h>

struct apb_atomic_file {
	const char *target; /* the caller's path, borrowed, used in messages */
	char *tmp;          /* "target.tmp.XXXXXX", NULL once renamed or removed */
	int fd;             /* open for writing, -1 when closed */
};

/*
 * May target be replaced? lstat()s it without following a link. Returns 0
 * with *st filled when it is a regular file, 0 with st->st_mode == 0 when
 * nothing is there; otherwise, with err naming target and what it is:
 * -ELOOP for a symbolic link (err gives the link's contents), -EISDIR for
 * a directory, -EINVAL for a FIFO, device or socket, or lstat's errno.
 */
int apb_atomic_check_target(const char *target, struct stat *st, char *err,
			    size_t err_len);

/* What a non-regular file is, for "PATH: is a FIFO, not a regular file". */
const char *apb_file_kind(mode_t mode);

/*
 * Check target (apb_atomic_check_target), then create the temporary file
 * for it (O_EXCL, mode 0666 less the umask, like any newly created file)
 * and open it for writing at offset 0. On failure nothing is left,
 * af->fd is -1, and err names target. Returns 0, the check's error, or
 * the errno of the failing open (-ENOMEM for the name).
 */
int apb_atomic_open(struct apb_atomic_file *af, const char *target, char *err,
		    size_t err_len);

/*
 * Check the target again (it may have changed while the file was being
 * written); when it is a regular file give the new file its mode, owner
 * and group (an owner or group the caller may not give away stays the
 * caller's, and then the set-user-ID and set-group-ID bits are dropped).
 * Then fsync and close the file, rename it over the target, fsync the
 * target's directory. On a failure before the rename the temporary file is
 * removed and the target is untouched.
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
