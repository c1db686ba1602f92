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

/* Mode 0666 goes through the umask, so the result has the permissions any
 * newly created file would have. */
int apb_atomic_open(struct apb_atomic_file *af, const char *target, char *err,
		    size_t err_len)
{
	size_t n = strlen(target) + sizeof(".tmp.XXXXXX");
	int rc = -EEXIST;

	af->target = target;
	af->fd = -1;
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
	int rc = 0, fd = af->fd;

	af->fd = -1;
	if (fsync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(af->tmp, af->target) != 0)
		rc = -errno;
	if (rc) {
		apb_fail(rc, err, err_len, "%s: %s", af->target, strerror(-rc));
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
