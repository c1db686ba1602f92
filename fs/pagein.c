/*
 * pagein.c - the page-in path: how a cache miss becomes bytes in a cache
 * slot, and what the log says when a read fails.
 *
 * The cache calls apbfs_pagein_load() (struct apb_cache_config.load) for
 * every load, a reader's miss or a prefetch run alike, with no cache lock
 * held. One load, in order:
 *
 *  1. The chunk memory is claimed (the fault hook below).
 *  2. The run is read from the source with apb_bundle_preadv()
 *     (core/bundle.c, which for version 2 verifies every bundle block the
 *     run of cache chunks covers and reports a mismatch as -EBADMSG with
 *     the block's index): the bundle file, or the object behind the
 *     bundle's URL (core/source.c), alike.
 *  3. A bundle block that failed verification is counted
 *     (io.checksum_errors) and named in the read log; the load fails with
 *     -EBADMSG, which the cache hands to every get waiting for it and keeps
 *     nothing of.
 *  4. The source's own check (source_check()). A local file: is it still
 *     the one that was mounted (backing.c)? A URL has nothing to stat:
 *     every request carried the ETag seen at mount (If-Match), so a read
 *     of a changed or removed object failed, and the source says so
 *     (apb_bundle_remote_stats().changed). Either way, once the bundle
 *     changed every load fails with -EIO and apbfs_source_changed() turns
 *     every model read, hits included, to EIO: cached bytes of a version
 *     that is gone must not be served beside errors for the rest.
 *
 * A read that fails ends in apbfs_read_failed(), whatever the cause; the
 * reader sees EIO for a bad block (EBADMSG is the daemon's own name for it,
 * so that the read log can tell that the load already named it).
 *
 * The read log: one policy for every line the daemon writes about a failed
 * read. A line names one distinct (model, byte offset, error): the bundle
 * block that failed its checksum (its bytes, which need not match a cache
 * chunk's), or the cache chunk a read failed on for
 * another reason. Each is named once per mount, and at most
 * APBFS_READ_LOG_MAX of them; then one line says that further ones are not
 * named. So a bundle rotting under a busy mount can neither flood the log
 * nor grow memory, while io.errors and io.checksum_errors in .stats keep
 * counting every failure.
 *
 * A bundle behind a URL: the remote reader (core/remote.c) writes a line of
 * its own for a request that failed for good, naming the URL, the range
 * and why (apbfs_remote_log(), the bundle's log callback). The read log
 * names each failed chunk already; the remote's line adds the why, which a
 * server that is down repeats for every chunk. So each distinct reason is
 * named once: the line with its numbers (range, attempts, milliseconds,
 * port; not an HTTP status) left out is the key, kept in the same table (model
 * APBFS_READ_LOG_REMOTE, offset a hash of the key) under the same bound and
 * the same closing line. A server down under N reads of different chunks
 * gives one remote line and N read log lines (at most APBFS_READ_LOG_MAX in
 * all, then one more). Its warnings, once per open, pass; retries are not
 * shown: the line that matters is the one after the last.
 *
 * Chunk memory: the cache's slots are pages of one MAP_NORESERVE region,
 * allocated by the kernel when the load first writes them. When that
 * allocation fails inside pread() (a fault taken by the kernel on behalf of
 * a system call, or the pinning of an O_DIRECT read), the call fails with
 * EFAULT or ENOMEM instead of a signal; a load that fails so answers
 * ENOMEM, the read fails and the daemon serves the next one. Whether the
 * allocator's OOM killer picks some process first is the kernel's policy.
 * MADV_POPULATE_WRITE before each load allocates through the same path, so
 * it would change neither; it costs 4 us per 64 KiB slot even when its
 * pages are already there (measured), as much as the read itself, and is
 * not done. A loader that writes a slot from user space (decompression)
 * takes the fault itself; there populating first would be the clean way.
 * APBFS_FAULT_ALLOC_EVERY=N (test hook, read once at startup by main.c into
 * opt.fault_alloc_every) makes every Nth chunk's memory fail that way, so
 * the path can be tested.
 *
 * Locking: apbfs_read_log.mu guards the read log; it is taken with no other
 * lock held and nothing is called under it but the table search.
 */
#include "apbfs.h"

#include <errno.h>
#include <string.h>

void apbfs_pagein_init(struct apbfs *fs)
{
	apb_mutex_init(&fs->read_log.mu);
}

void apbfs_pagein_fini(struct apbfs *fs)
{
	apb_mutex_destroy(&fs->read_log.mu);
}

/* The fault hook: every Nth chunk's memory cannot be had (0 or -ENOMEM). */
static int claim_memory(struct apbfs *fs)
{
	uint32_t every = fs->opt.fault_alloc_every; /* 0: off */

	if (every &&
	    (atomic_fetch_add(&fs->fault_claims, 1) + 1) % every == 0)
		return -ENOMEM;
	return 0;
}

/* Whether (model, offset, err) is to be named now: true the first time,
 * while there is room; the one time the log fills, *full is set. */
static bool read_log_first(struct apbfs *fs, uint32_t model, uint64_t offset,
			   int err, bool *full)
{
	struct apbfs_read_log *l = &fs->read_log;
	bool say = true;

	*full = false;
	apb_mutex_lock(&l->mu);
	for (size_t i = 0; i < l->n && say; i++)
		if (l->seen[i].model == model && l->seen[i].offset == offset &&
		    l->seen[i].err == err)
			say = false;
	if (say && l->n < APBFS_READ_LOG_MAX) {
		l->seen[l->n++] = (struct apbfs_read_error){model, err, offset};
	} else if (say) {
		say = false;
		*full = !l->full;
		l->full = true;
	}
	apb_mutex_unlock(&l->mu);
	return say;
}

static void read_log_full(void)
{
	fuse_log(FUSE_LOG_ERR, "apbundlefs: more than %d read errors; not "
		 "naming further ones (see io.errors and io.checksum_errors)\n",
		 APBFS_READ_LOG_MAX);
}

/* FNV-1a of msg with every run of digits taken as one '#', but an HTTP
 * status ("HTTP 503"): a 503 and a 404 are different reasons, two ports or
 * two ranges are not. */
static uint64_t reason_key(const char *msg)
{
	uint64_t h = 0xcbf29ce484222325ull;
	bool digits = false, status = false;

	for (const char *p = msg; *p; p++) {
		bool d = *p >= '0' && *p <= '9';

		if (d && !digits)
			status = p - msg >= 5 && strncmp(p - 5, "HTTP ", 5) == 0;
		if (d && digits && !status)
			continue;
		digits = d;
		h = (h ^ (unsigned char)(d && !status ? '#' : *p)) *
		    0x100000001b3ull;
	}
	return h;
}

void apbfs_remote_log(void *arg, enum apb_log_level level, const char *msg)
{
	struct apbfs *fs = arg;
	bool full = false;

	switch (level) {
	case APB_LOG_RETRY:
		return;
	case APB_LOG_WARN:
		fuse_log(FUSE_LOG_WARNING, "apbundlefs: %s\n", msg);
		return;
	case APB_LOG_ERROR:
		break;
	}
	if (read_log_first(fs, APBFS_READ_LOG_REMOTE, reason_key(msg), 0,
			   &full))
		fuse_log(FUSE_LOG_ERR, "apbundlefs: %s\n", msg);
	if (full)
		read_log_full();
}

/* Bundle block k of model failed its checksum: count it, name it once,
 * with the model bytes it covers (k counts blocks, not cache chunks). */
static void bad_block(struct apbfs *fs, uint32_t model, uint64_t k)
{
	const struct apb_model *m = apb_bundle_model(fs->bundle, model);
	uint64_t start = k * m->block_size;
	uint64_t end = start + m->block_size < m->size ? start + m->block_size
						       : m->size;
	bool full;

	atomic_fetch_add(&fs->io.checksum_errors, 1);
	if (read_log_first(fs, model, start, EBADMSG, &full))
		fuse_log(FUSE_LOG_ERR, "apbundlefs: model '%s' block %llu "
			 "(bytes %llu to %llu): checksum mismatch after a "
			 "second read; reads of it fail with EIO\n", m->name,
			 (unsigned long long)k, (unsigned long long)start,
			 (unsigned long long)end);
	if (full)
		read_log_full();
}

int apbfs_read_failed(struct apbfs *fs, uint32_t model, uint64_t chunk,
		      int rc)
{
	const struct apb_model *m = apb_bundle_model(fs->bundle, model);
	uint64_t start = chunk * fs->opt.chunk_size;
	uint64_t end = start + fs->opt.chunk_size < m->size
			       ? start + fs->opt.chunk_size : m->size;
	bool full;

	atomic_fetch_add(&fs->io.errors, 1);
	if (rc == -EBADMSG) /* the load that found it named it */
		return EIO;
	if (read_log_first(fs, model, start, -rc, &full))
		fuse_log(FUSE_LOG_ERR, "apbundlefs: model '%s' chunk %llu "
			 "(bytes %llu to %llu): %s\n", m->name,
			 (unsigned long long)chunk, (unsigned long long)start,
			 (unsigned long long)end, strerror(-rc));
	if (full)
		read_log_full();
	return -rc;
}

/* A read of the URL found the object changed or removed: say so once,
 * fail every read from now on, give the cache's memory back (as backing.c
 * does for a local file). Pinned chunks stay until unpinned. */
static void remote_changed(struct apbfs *fs)
{
	if (atomic_exchange(&fs->source_changed, true))
		return;
	fuse_log(FUSE_LOG_ERR, "apbundlefs: %s changed since mount (or was "
		 "removed); every model read fails with EIO until it is "
		 "remounted\n", fs->bundle_name);
	apb_cache_clear(fs->cache);
}

/* Step 4 (see the top): 0, or -EIO once the bundle changed since mount.
 * got is what the read of the load returned. */
static int source_check(struct apbfs *fs, long got)
{
	struct apb_bundle_remote_stats st;

	if (!fs->remote)
		return apbfs_backing_check(fs);
	if (got >= 0 && !atomic_load(&fs->source_changed))
		return 0;
	if (apb_bundle_remote_stats(fs->bundle, &st) == 0 && st.changed)
		remote_changed(fs);
	return atomic_load(&fs->source_changed) ? -EIO : 0;
}

bool apbfs_source_changed(struct apbfs *fs)
{
	return atomic_load(&fs->source_changed);
}

/* Run lengths from what one read of the run returned: full chunks, then
 * the model's last, short one, then nothing. */
static void run_lens(long got, size_t n, size_t cap, size_t *lens)
{
	for (size_t i = 0; i < n; i++) {
		size_t at = i * cap;

		lens[i] = (size_t)got <= at ? 0 :
			  (size_t)got - at < cap ? (size_t)got - at : cap;
	}
}

long apbfs_pagein_load(void *ctx, uint32_t model, uint64_t first,
		       void *const *bufs, size_t n, size_t cap, size_t *lens)
{
	struct apbfs *fs = ctx;
	struct iovec iov[APB_CACHE_RUN_LIMIT] = {{NULL, 0}};
	uint64_t bad = 0;
	long got = 0;

	if (n > APB_CACHE_RUN_LIMIT)
		return -EINVAL;
	for (size_t i = 0; i < n && got == 0; i++) {
		got = claim_memory(fs);
		iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = cap};
	}
	if (got == 0)
		got = apb_bundle_preadv(fs->bundle, model, first * cap, iov,
					(int)n, &bad);
	if (got == -EBADMSG)
		bad_block(fs, model, bad);
	else if (got == -EFAULT) /* our slot, valid: its page could not be had */
		got = -ENOMEM;
	if (got >= 0)
		run_lens(got, n, cap, lens);
	/* The source's check comes last: a load that raced a change of the
	 * file must not be served (backing.c). */
	if (source_check(fs, got) != 0)
		return -EIO;
	return got < 0 ? got : 0;
}
