/*
 * atomic.c - output files that appear complete or not at all (atomic.h).
 *
 * The sequence is the classic one: create "TARGET.tmp.XXXXXX" next to the
 * target with O_EXCL, let the caller write it, fsync it, close it, rename
 * it over the target, fsync the directory so the rename itself is durable.
 *
 * Invariants:
 *  - af->tmp is non-NULL exactly while a temporary file of ours exists
 *    under that name; apb_atomic_abort() unlinks it then and only then, so
 *    it never removes a file it did not create, and never the target.
 *  - af->fd is -1 whenever no descriptor is open; the descriptor is closed
 *    exactly once (commit or abort).
 *  - Before the rename the target is untouched; after it the target holds
 *    every byte written (they were fsynced first). A failure to fsync the
 *    directory is still reported, although the file is already in place.
 *  - Only a regular file or nothing is ever replaced, checked with lstat()
 *    when the file is opened (so a refused target costs no work) and again
 *    just before the rename (it may have changed meanwhile). rename()
 *    itself does not follow links; the window between the last check and
 *    the rename is the only one left, and closing it would need
 *    renameat2(RENAME_EXCHANGE) and a way back, which is not worth it for
 *    a file the caller's own directory holds.
 *  - A replaced file keeps its permission bits, and its owner and group
 *    when the caller may set them (root, or a group the caller is in).
 *    The set-ID bits are only kept with the owner and group they belong
 *    to: a previous owner's set-user-ID bit is never handed to the caller.
 *  - The name is random (getrandom, or a pid/time mix when that is not
 *    available); O_EXCL, not the randomness, is what makes it safe.
 */
#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

/* Six characters in [0-9A-Za-z] for a temporary name, like mkstemp. */
static void random_suffix(char out[7])
{
	static const char set[] =
		"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	unsigned char r[6];

	if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
		/* O_EXCL keeps this safe; randomness only avoids retries. */
		uint64_t x = (uint64_t)getpid() * 0x9E3779B97F4A7C15u ^
			     (uint64_t)time(NULL) ^ (uint64_t)clock();
		for (int i = 0; i < 6; i++, x >>= 8)
			r[i] = (unsigned char)x;
	}
	for (int i = 0; i < 6; i++)
		out[i] = set[r[i] % (sizeof(set) - 1)];
	out[6] = '\0';
}

const char *apb_file_kind(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFDIR:
		return "a directory";
	case S_IFIFO:
		return "a FIFO";
	case S_IFCHR:
		return "a character device";
	case S_IFBLK:
		return "a block device";
	case S_IFSOCK:
		return "a socket";
	default:
		return "not a regular file";
	}
}

int apb_atomic_check_target(const char *target, struct stat *st, char *err,
			    size_t err_len)
{
	char dest[4096];
	ssize_t n;

	if (lstat(target, st) != 0) {
		int rc = -errno;

		memset(st, 0, sizeof(*st));
		return rc == -ENOENT ? 0 : apb_fail(rc, err, err_len, "%s: %s",
						    target, strerror(-rc));
	}
	if (S_ISREG(st->st_mode))
		return 0;
	if (S_ISDIR(st->st_mode))
		return apb_fail(-EISDIR, err, err_len, "%s: %s", target,
				strerror(EISDIR));
	if (S_ISLNK(st->st_mode)) {
		/* Not followed: the caller who means the file it names can
		 * say so, and replacing the link would break whoever uses it. */
		n = readlink(target, dest, sizeof(dest) - 1);
		dest[n < 0 ? 0 : n] = '\0';
		return apb_fail(-ELOOP, err, err_len,
				"%s: is a symbolic link to '%s'; give that path "
				"to write the file it names, or remove the link",
				target, dest);
	}
	return apb_fail(-EINVAL, err, err_len,
			"%s: is %s, not a regular file; nothing was written",
			target, apb_file_kind(st->st_mode));
}

/* Give the temporary file fd what the regular file st it replaces had:
 * owner and group when allowed (EPERM otherwise is expected and not an
 * error), then the permission bits. */
static int keep_owner_and_mode(int fd, const struct stat *st)
{
	mode_t mode = st->st_mode & 07777;

	if (fchown(fd, st->st_uid, st->st_gid) != 0) {
		mode &= (mode_t)~S_ISUID;
		if (fchown(fd, (uid_t)-1, st->st_gid) != 0)
			mode &= (mode_t)~S_ISGID;
	}
	return fchmod(fd, mode) != 0 ? -errno : 0;
}

/* Mode 0666 goes through the umask, so the result has the permissions any
 * newly created file would have. */
int apb_atomic_open(struct apb_atomic_file *af, const char *target, char *err,
		    size_t err_len)
{
	size_t n = strlen(target) + sizeof(".tmp.XXXXXX");
	struct stat st;
	int rc;

	af->target = target;
	af->fd = -1;
	af->tmp = NULL;
	rc = apb_atomic_check_target(target, &st, err, err_len);
	if (rc)
		return rc;
	rc = -EEXIST;
	af->tmp = malloc(n);
	if (!af->tmp)
		return apb_fail(-ENOMEM, err, err_len, "%s: %s", target,
				strerror(ENOMEM));
	for (int tries = 0; tries < 100 && rc == -EEXIST; tries++) {
		char sfx[7];

		random_suffix(sfx);
		snprintf(af->tmp, n, "%s.tmp.%s", target, sfx);
		af->fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			      0666);
		rc = af->fd >= 0 ? 0 : -errno;
	}
	if (rc) {
		apb_fail(rc, err, err_len, "%s: %s", target, strerror(-rc));
		free(af->tmp);
		af->tmp = NULL;
	}
	return rc;
}

void apb_atomic_abort(struct apb_atomic_file *af)
{
	if (af->fd >= 0)
		close(af->fd);
	af->fd = -1;
	if (af->tmp)
		unlink(af->tmp);
	free(af->tmp);
	af->tmp = NULL;
}

/* fsync the directory holding path, so a rename into it is durable. EINVAL
 * (a filesystem that cannot sync directories) is not an error. */
static int fsync_parent_dir(const char *path)
{
	char *copy = strdup(path), *slash;
	int fd, rc = 0;

	if (!copy)
		return -ENOMEM;
	slash = strrchr(copy, '/');
	if (!slash)
		strcpy(copy, ".");
	else if (slash == copy)
		slash[1] = '\0';
	else
		*slash = '\0';
	fd = open(copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
		rc = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return rc;
}

int apb_atomic_commit(struct apb_atomic_file *af, char *err, size_t err_len)
{
	const char *doing = "";
	struct stat st;
	int rc, fd = af->fd;

	rc = apb_atomic_check_target(af->target, &st, err, err_len);
	if (rc) {
		apb_atomic_abort(af);
		return rc;
	}
	af->fd = -1;
	rc = st.st_mode ? keep_owner_and_mode(fd, &st) : 0;
	if (rc)
		doing = "keeping the replaced file's mode: ";
	else if (fsync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(af->tmp, af->target) != 0)
		rc = -errno;
	if (rc) {
		apb_fail(rc, err, err_len, "%s: %s%s", af->target, doing,
			 strerror(-rc));
		apb_atomic_abort(af);
		return rc;
	}
	free(af->tmp);
	af->tmp = NULL;
	/* The file is complete and in place; a failure here only means its
	 * directory entry may not yet be durable, but it is still reported. */
	rc = fsync_parent_dir(af->target);
	if (rc)
		apb_fail(rc, err, err_len, "%s: syncing directory: %s",
			 af->target, strerror(-rc));
	return rc;
}
