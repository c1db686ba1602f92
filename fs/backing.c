/*
 * backing.c - the local source's part of the page-in path: the bundle
 * file under a running mount. Is it still the file that was mounted?
 * (pagein.c calls apbfs_backing_check() after every load from it.)
 *
 * A bundle rewritten in place (cp over it), replaced (a new file renamed
 * over the path, as `apbundle create` does) or removed would otherwise be
 * served as a mix: chunks cached before the change are old bytes, chunks
 * loaded after it are new bytes at old offsets. So each page-in is judged
 * after its read, against what was true at mount:
 *
 *  - fstat() of an fd on the bundle's inode, on every page-in (about 0.6 us
 *    against 4 us for a 64 KiB pread from the page cache, measured, and
 *    nothing against a disk read). It is taken after the read: a write
 *    updates mtime before it copies its bytes, so a read that raced a
 *    write sees the new mtime or the new size here.
 *  - stat() of the bundle's path (2 us), at most every PATH_CHECK_NS: a
 *    file renamed over the path or removed leaves our fd on the old inode,
 *    whose bytes stay consistent, so noticing it a little late serves no
 *    wrong byte.
 *
 * Any difference of size, mtime, device or inode marks the bundle
 * CHANGED, for good: every model read fails with EIO from then on (hits
 * too: cached bytes of a file that is no more are the "old" half of a
 * mix), the log says why once, and the cache is cleared to give the memory
 * back. A remount serves the new file.
 *
 * One exception, so that a truncated file fails only the chunks it lost
 * (docs/USAGE.md, "When the bundle file changes under the mount"): a file
 * that got shorter, on the same inode, whose bytes before the first model
 * (header and manifest) are still those read at mount, is the mounted bundle
 * minus its tail. That shorter state becomes the new reference; reads past
 * the new end fail with EIO through the short read, everything else is
 * served. A rewrite to a different bundle changes the manifest, so it cannot
 * pass for a truncation.
 *
 * A truncation is not one event to fstat(): the file system stores the new
 * size and the new mtime one after the other (ext4, xfs and tmpfs the size
 * first; ext4 frees the lost blocks in between), and fstat() reads the size
 * before the mtime, so a page-in under a truncation may see either half
 * alone. Judged as they come, "new size, old mtime" was taken for the
 * truncation and the mtime landing after it for a rewrite in place: every
 * read failed until remount, in 4 of 10 runs of a truncation under 4
 * O_DIRECT readers. So the halves are judged as follows, and neither makes
 * a rewrite in place pass unnoticed:
 *
 *  - Shorter, mtime unchanged: a truncation under way. Nothing is judged
 *    and the reference stays; the load is served (a truncation changes no
 *    byte it keeps, and what it lost comes back short, as EIO). Could it
 *    be a rewrite? Every write moves the mtime before it copies a byte, so
 *    a file whose bytes changed has a new mtime - unless the writer set the
 *    old one back, which no check of size and mtime can see anyway (see
 *    USAGE.md). Once the mtime lands, the truncation is judged against the
 *    mount's reference as any other.
 *  - New mtime, same size: a rewrite in place, or the mtime of a
 *    truncation whose size fstat() read just before it was stored. The
 *    size is read again, until it differs or SETTLE_NS have passed (with
 *    the size stored first, the second fstat() already shows it; the wait
 *    covers a file system that stores the mtime first). A size still the
 *    same then is a rewrite: the load that saw it is not served meanwhile.
 *    A write in place followed within SETTLE_NS by a truncation is judged
 *    a truncation - as it is when both happen between two page-ins, which
 *    only ever see where the file ended up.
 *
 * Locking: the reference size and mtime are atomics read without a lock on
 * the fast path; any difference is judged again under mu, which alone
 * updates the reference and sets fs->source_changed. mu is held across
 * the one hash of the header when a truncation is judged, and across the
 * SETTLE_NS wait; nothing else takes it.
 */
#include "apbfs.h"

#include <apbundle/checksum.h>

#include "../core/lock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PATH_CHECK_NS 100000000ull /* 100 ms */
#define SETTLE_NS 50000000ull      /* 50 ms */

struct apbfs_backing {
	char *path;                 /* absolute: the daemon moves to / */
	int fd;                     /* on the mounted inode */
	dev_t dev;
	ino_t ino;
	uint64_t mount_size;
	uint64_t head_len;          /* bytes before the first model's data */
	uint64_t head_xxh3;
	atomic_uint_fast64_t next_path_check_ns;
	atomic_uint_fast64_t size;  /* reference; mu to change */
	atomic_uint_fast64_t mtime_ns;
	struct apb_mutex mu;
};

static uint64_t mtime_ns(const struct stat *st)
{
	return (uint64_t)st->st_mtim.tv_sec * 1000000000ull +
	       (uint64_t)st->st_mtim.tv_nsec;
}

static uint64_t coarse_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Every model starts after the header and manifest (bundle.c checks). */
static uint64_t head_len_of(const struct apb_bundle *b, uint64_t size)
{
	uint64_t head = size;

	for (size_t i = 0; i < apb_bundle_count(b); i++)
		if (apb_bundle_model(b, i)->offset < head)
			head = apb_bundle_model(b, i)->offset;
	return head;
}

int apbfs_backing_open(struct apbfs *fs, const char *path, char *err,
		       size_t err_len)
{
	const struct stat *bst = apb_bundle_stat(fs->bundle);
	struct apbfs_backing *bk = calloc(1, sizeof(*bk));
	struct stat st;
	int rc;

	if (!bk) {
		snprintf(err, err_len, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	bk->fd = -1;
	fs->backing = bk;
	apb_mutex_init(&bk->mu);
	bk->path = realpath(path, NULL);
	if (!bk->path) {
		rc = -errno;
		snprintf(err, err_len, "%s", strerror(-rc));
		return rc;
	}
	bk->fd = open(bk->path, O_RDONLY | O_CLOEXEC);
	if (bk->fd < 0 || fstat(bk->fd, &st) != 0) {
		rc = -errno;
		snprintf(err, err_len, "%s", strerror(-rc));
		return rc;
	}
	if (st.st_dev != bst->st_dev || st.st_ino != bst->st_ino ||
	    st.st_size != bst->st_size || mtime_ns(&st) != mtime_ns(bst)) {
		snprintf(err, err_len, "changed while it was being opened");
		return -EAGAIN;
	}
	bk->dev = st.st_dev;
	bk->ino = st.st_ino;
	bk->mount_size = (uint64_t)st.st_size;
	atomic_store(&bk->size, bk->mount_size);
	atomic_store(&bk->mtime_ns, mtime_ns(&st));
	bk->head_len = head_len_of(fs->bundle, bk->mount_size);
	rc = apb_checksum_fd(bk->fd, 0, bk->head_len, &bk->head_xxh3, NULL,
			     NULL);
	if (rc)
		snprintf(err, err_len, "%s", strerror(-rc));
	return rc;
}

void apbfs_backing_close(struct apbfs *fs)
{
	struct apbfs_backing *bk = fs->backing;

	if (!bk)
		return;
	if (bk->fd >= 0)
		close(bk->fd);
	apb_mutex_destroy(&bk->mu);
	free(bk->path);
	free(bk);
	fs->backing = NULL;
}

/* Mark the bundle changed (mu held), say why once, free the cache. */
static void mark_changed(struct apbfs *fs, const char *why)
{
	struct apbfs_backing *bk = fs->backing;

	apb_assert_held(&bk->mu);
	if (atomic_load(&fs->source_changed))
		return;
	atomic_store(&fs->source_changed, true);
	fuse_log(FUSE_LOG_ERR, "apbundlefs: %s changed since mount (%s); "
		 "every model read fails with EIO until it is remounted\n",
		 bk->path, why);
	/* Cached chunks are never served again: give their memory back.
	 * Pinned ones stay until unpinned; reads of them fail all the same. */
	apb_cache_clear(fs->cache);
}

/* A shorter file on the same inode with the same header and manifest:
 * the mounted bundle minus its tail. mu held. */
static bool is_truncation(struct apbfs_backing *bk, const struct stat *st)
{
	uint64_t h;

	apb_assert_held(&bk->mu);
	if ((uint64_t)st->st_size >= atomic_load(&bk->size) ||
	    (uint64_t)st->st_size < bk->head_len)
		return false;
	return apb_checksum_fd(bk->fd, 0, bk->head_len, &h, NULL, NULL) == 0 &&
	       h == bk->head_xxh3;
}

/* Whether st differs from the reference in a way to judge: any change of
 * size or mtime but a shorter file with the old mtime (a truncation whose
 * mtime has not landed yet; see the top). */
static bool to_judge(struct apbfs_backing *bk, const struct stat *st)
{
	uint64_t size = atomic_load(&bk->size);

	if (mtime_ns(st) == atomic_load(&bk->mtime_ns))
		return (uint64_t)st->st_size > size;
	return true;
}

/* A new mtime with the reference size: fstat() again until the size
 * differs or SETTLE_NS have passed (see the top). mu held. */
static void settle(struct apbfs_backing *bk, struct stat *st)
{
	const struct timespec pause = {0, 1000000}; /* 1 ms */
	uint64_t until = coarse_now_ns() + SETTLE_NS;
	struct stat again;

	apb_assert_held(&bk->mu);
	while ((uint64_t)st->st_size == atomic_load(&bk->size)) {
		if (fstat(bk->fd, &again) != 0)
			return;
		*st = again;
		if ((uint64_t)st->st_size != atomic_load(&bk->size) ||
		    coarse_now_ns() >= until)
			return;
		nanosleep(&pause, NULL);
	}
}

/* Judge a size or mtime different from the reference. mu held. */
static void judge_fd(struct apbfs *fs, struct stat *st)
{
	struct apbfs_backing *bk = fs->backing;
	uint64_t size = atomic_load(&bk->size);
	char why[96];

	apb_assert_held(&bk->mu);
	if (!to_judge(bk, st))
		return; /* another thread judged it already */
	settle(bk, st);
	if (is_truncation(bk, st)) {
		fuse_log(FUSE_LOG_ERR, "apbundlefs: %s truncated since mount "
			 "(size %llu -> %llu); reads of the bytes it lost fail "
			 "with EIO\n", bk->path, (unsigned long long)size,
			 (unsigned long long)st->st_size);
		atomic_store(&bk->size, (uint64_t)st->st_size);
		atomic_store(&bk->mtime_ns, mtime_ns(st));
		return;
	}
	if ((uint64_t)st->st_size != size)
		snprintf(why, sizeof(why), "size %llu -> %llu",
			 (unsigned long long)size,
			 (unsigned long long)st->st_size);
	else
		snprintf(why, sizeof(why), "modified, size %llu unchanged",
			 (unsigned long long)size);
	mark_changed(fs, why);
}

static void check_path(struct apbfs *fs)
{
	struct apbfs_backing *bk = fs->backing;
	uint64_t now = coarse_now_ns();
	uint64_t due = atomic_load(&bk->next_path_check_ns);
	struct stat st;
	char why[96];

	if (now < due || !atomic_compare_exchange_strong(
				 &bk->next_path_check_ns, &due,
				 now + PATH_CHECK_NS))
		return; /* not yet, or another thread checks it */
	if (stat(bk->path, &st) != 0) {
		if (errno != ENOENT && errno != ENOTDIR)
			return; /* cannot tell; the fd still reads our inode */
		snprintf(why, sizeof(why), "removed");
	} else if (st.st_dev != bk->dev || st.st_ino != bk->ino) {
		snprintf(why, sizeof(why), "replaced: inode %llu -> %llu",
			 (unsigned long long)bk->ino,
			 (unsigned long long)st.st_ino);
	} else {
		return;
	}
	apb_mutex_lock(&bk->mu);
	mark_changed(fs, why);
	apb_mutex_unlock(&bk->mu);
}

int apbfs_backing_check(struct apbfs *fs)
{
	struct apbfs_backing *bk = fs->backing;
	struct stat st;

	if (!bk)
		return 0;
	if (!atomic_load(&fs->source_changed) && fstat(bk->fd, &st) == 0 &&
	    to_judge(bk, &st)) {
		apb_mutex_lock(&bk->mu);
		judge_fd(fs, &st);
		apb_mutex_unlock(&bk->mu);
	}
	if (!atomic_load(&fs->source_changed))
		check_path(fs);
	return atomic_load(&fs->source_changed) ? -EIO : 0;
}
