/*
 * trace.c - `-o trace=FILE`: record every chunk access of the cache (the
 * cache's trace hook, struct apb_cache_config.trace) in a trace file whose
 * bytes docs/FORMAT.md ("Trace files") and include/apbundle/trace.h define,
 * for `apbreplay` to feed through every eviction policy.
 *
 * COST
 *
 * Without trace= the cache's hook is NULL: one branch per access, nothing
 * else. With it, each access takes one mutex, reads the clock and packs 16
 * bytes into a buffer; a full buffer (BUF_RECORDS records, 64 KiB) is
 * written with one pwrite() by the thread that filled it, with the mutex
 * dropped, while the other threads fill the second buffer.
 *
 * STRUCTURES AND LOCKING
 *
 * Two buffers, buf[active] being filled (fill records so far) and
 * buf[!active], which is either idle or being written (writing). One
 * mutex, mu, protects active, fill, writing, the counters and stop; it is
 * the only lock here and no other lock is taken under it. It is held for
 * the arithmetic and the copy of one record, never across I/O: the thread
 * whose record fills buf[active] swaps the buffers (if buf[!active] is not
 * being written), sets writing, computes the file offset of the full
 * buffer, drops mu and writes. A thread that finds buf[active] full (the
 * swap waits for the previous write) waits on written_cv; tracing then
 * slows the readers down to the speed of the trace file's disk rather than
 * losing records. The writer, done, retakes mu, clears writing and swaps
 * again at once if buf[active] filled meanwhile.
 *
 * Records are appended in mu order and their time is read under mu, so
 * times never decrease along the file. Offsets are handed out under mu in
 * the same order, so the file holds the records in that order even though
 * at most one write is in flight at a time anyway.
 *
 * BOUND AND ERRORS
 *
 * The file never exceeds trace_max: header_bytes + max_records * 16 <=
 * trace_max. The access that would be record max_records + 1 stops the
 * recording (one log line); that one and all later ones only count in
 * dropped. A write that fails (a full disk) stops the recording the same
 * way, with one log line, and the records of the failed buffer count as
 * dropped too; reads never see any of it. apbfs_trace_close() writes what
 * is buffered and finalizes the header: records (those in the file),
 * dropped, and the flags (complete, full, write error).
 *
 * The file is created before mounting, so a bad path fails the mount;
 * recording starts right away (pins and preloads are accesses too) and
 * apbfs_trace_close() runs after every thread that uses the cache is gone.
 */
#include "apbfs.h"
#include "../core/lock.h"

#include <apbundle/size.h>
#include <apbundle/trace.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUF_RECORDS 4096u /* 64 KiB: one write per 4096 accesses */
#define BUF_BYTES (BUF_RECORDS * APB_TRACE_RECORD_BYTES)

struct apbfs_trace {
	/* Immutable after apbfs_trace_open(). */
	int fd;
	const char *path;               /* fs->opt.trace_path, which outlives
					 * the trace (as state_path does) */
	uint64_t header_bytes;          /* the first record's offset */
	uint64_t max_records;           /* what trace_max leaves for records */
	uint64_t max_bytes;
	uint32_t names_flag;            /* APB_TRACE_F_NAMES or 0 */
	struct timespec start;          /* CLOCK_MONOTONIC of time 0 */
	uint64_t start_realtime_ns;

	struct apb_mutex mu;
	pthread_cond_t written_cv;      /* writing went false */
	/* Everything below: mu. */
	unsigned char *buf[2];          /* BUF_BYTES each */
	unsigned active;                /* the buffer being filled */
	uint32_t fill;                  /* records in buf[active] */
	bool writing;                   /* buf[!active] is being written */
	uint64_t handed_out;            /* records given to writes so far;
					 * + fill: all records accepted */
	uint64_t in_file;               /* records written successfully */
	uint64_t dropped;               /* accesses not recorded */
	uint32_t stop;                  /* APB_TRACE_F_FULL / _WRITE_ERROR */
};

static uint64_t ns_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - t0->tv_sec) * 1000000000u +
	       (uint64_t)now.tv_nsec - (uint64_t)t0->tv_nsec;
}

static int pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = pwrite(fd, c, n, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		if (w == 0)
			return -EIO;
		c += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* ---- the header ------------------------------------------------------ */

static uint64_t pad8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

/* Bytes before the first record, with or without the names. */
static uint64_t header_size(const struct apb_bundle *b, bool names)
{
	uint64_t n = APB_TRACE_HEADER_FIXED;

	for (size_t i = 0; i < apb_bundle_count(b); i++)
		n += pad8(12 + (names ? strlen(apb_bundle_model(b, i)->name)
				      : 0));
	return (n + 15) & ~(uint64_t)15;
}

static void fixed_header(const struct apbfs_trace *t, uint32_t chunk_size,
			 uint32_t model_count, uint32_t flags,
			 uint64_t records, uint64_t dropped,
			 unsigned char h[APB_TRACE_HEADER_FIXED])
{
	memset(h, 0, APB_TRACE_HEADER_FIXED);
	memcpy(h, APB_TRACE_MAGIC, 8);
	apb_trace_put_u32(h + APB_TRACE_OFF_VERSION, APB_TRACE_VERSION);
	apb_trace_put_u32(h + APB_TRACE_OFF_HEADER_BYTES,
			  (uint32_t)t->header_bytes);
	apb_trace_put_u32(h + APB_TRACE_OFF_RECORD_BYTES,
			  APB_TRACE_RECORD_BYTES);
	apb_trace_put_u32(h + APB_TRACE_OFF_CHUNK_SIZE, chunk_size);
	apb_trace_put_u32(h + APB_TRACE_OFF_MODEL_COUNT, model_count);
	apb_trace_put_u32(h + APB_TRACE_OFF_FLAGS, flags);
	apb_trace_put_u64(h + APB_TRACE_OFF_RECORDS, records);
	apb_trace_put_u64(h + APB_TRACE_OFF_DROPPED, dropped);
	apb_trace_put_u64(h + APB_TRACE_OFF_MAX_BYTES, t->max_bytes);
	apb_trace_put_u64(h + APB_TRACE_OFF_START_NS, t->start_realtime_ns);
}

/* The fixed header (not complete yet) and the model table, streamed
 * through buf[0] so that a bundle of many models needs no large buffer. */
static int write_header(struct apbfs_trace *t, const struct apb_bundle *b,
			uint32_t chunk_size)
{
	uint32_t count = (uint32_t)apb_bundle_count(b);
	unsigned char *out = t->buf[0];
	uint64_t off = APB_TRACE_HEADER_FIXED;
	size_t used = 0;
	int rc;

	fixed_header(t, chunk_size, count, t->names_flag, 0, 0, out);
	rc = pwrite_all(t->fd, out, APB_TRACE_HEADER_FIXED, 0);
	for (uint32_t i = 0; i < count && rc == 0; i++) {
		const struct apb_model *m = apb_bundle_model(b, i);
		size_t len = t->names_flag ? strlen(m->name) : 0;
		size_t entry = (size_t)pad8(12 + len);

		/* A name is at most 4096 bytes (docs/USAGE.md), an entry
		 * far less than the buffer; the last 16 bytes stay free
		 * for the zeros up to header_bytes. */
		if (used + entry > BUF_BYTES - 16) {
			rc = pwrite_all(t->fd, out, used, off);
			off += used;
			used = 0;
			if (rc)
				break;
		}
		memset(out + used, 0, entry);
		apb_trace_put_u64(out + used, m->size);
		apb_trace_put_u32(out + used + 8, (uint32_t)len);
		memcpy(out + used + 12, m->name, len);
		used += entry;
	}
	if (rc == 0) {
		/* zeros up to header_bytes: at most 15, kept free above */
		size_t tail = (size_t)(t->header_bytes - off - used);

		memset(out + used, 0, tail);
		rc = pwrite_all(t->fd, out, used + tail, off);
	}
	return rc;
}

/* ---- open and close -------------------------------------------------- */

static const char *kind_of(mode_t mode)
{
	return S_ISFIFO(mode) ? "a FIFO" : S_ISCHR(mode) ? "a character device"
	       : S_ISBLK(mode) ? "a block device" : S_ISDIR(mode) ? "a directory"
	       : S_ISSOCK(mode) ? "a socket" : S_ISLNK(mode) ? "a symbolic link"
	       : "not a regular file";
}

/* Create or empty path as a regular file, never following a symbolic
 * link, never opening (or blocking on) a FIFO or a device, never the
 * bundle itself. Returns the fd or a negative errno, the reason in err. */
static int create_file(const char *path, const char *bundle_path, char *err,
		       size_t err_len)
{
	struct stat st, bst;
	int fd;

	if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		snprintf(err, err_len, "is %s; trace= writes a regular file of "
			 "its own", kind_of(st.st_mode));
		return -EINVAL;
	}
	/* O_NONBLOCK: a FIFO swapped in since the lstat() fails at once
	 * (ENXIO) or is caught by the fstat() below, instead of blocking. */
	fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK |
		  O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;

		snprintf(err, err_len, "%s", e == ELOOP ? "is a symbolic link; "
			 "trace= writes a regular file of its own" :
			 strerror(e));
		return -e;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, err_len, "is %s; trace= writes a regular file of "
			 "its own", kind_of(st.st_mode));
		close(fd);
		return -EINVAL;
	}
	if (stat(bundle_path, &bst) == 0 && bst.st_dev == st.st_dev &&
	    bst.st_ino == st.st_ino) {
		snprintf(err, err_len, "is the bundle being mounted");
		close(fd);
		return -EINVAL;
	}
	if (ftruncate(fd, 0) != 0) {
		int e = errno;

		snprintf(err, err_len, "%s", strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

/* How many bytes the header takes under max_bytes, and whether names fit:
 * names are left out when they would take more than half the bound. */
static int plan_header(struct apbfs_trace *t, const struct apb_bundle *b,
		       char *err, size_t err_len)
{
	uint64_t with = header_size(b, true), without = header_size(b, false);
	char s[32];

	t->names_flag = with <= t->max_bytes / 2 ? APB_TRACE_F_NAMES : 0;
	t->header_bytes = t->names_flag ? with : without;
	if (t->header_bytes > t->max_bytes || t->header_bytes > UINT32_MAX) {
		snprintf(err, err_len, "trace_max=%s is smaller than the trace "
			 "header (%llu bytes for %zu models)",
			 apb_size_format(t->max_bytes, s, sizeof(s)),
			 (unsigned long long)t->header_bytes,
			 apb_bundle_count(b));
		return -EINVAL;
	}
	t->max_records = (t->max_bytes - t->header_bytes) /
			 APB_TRACE_RECORD_BYTES;
	return 0;
}

static void trace_free(struct apbfs_trace *t)
{
	if (t->fd >= 0)
		close(t->fd);
	free(t->buf[0]);
	free(t->buf[1]);
	pthread_cond_destroy(&t->written_cv);
	apb_mutex_destroy(&t->mu);
	free(t);
}

int apbfs_trace_open(struct apbfs *fs, const char *bundle_path, char *err,
		     size_t err_len)
{
	struct apbfs_trace *t = calloc(1, sizeof(*t));
	struct timespec rt;
	int rc = -ENOMEM;

	if (!t) {
		snprintf(err, err_len, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	t->fd = -1;
	apb_mutex_init(&t->mu);
	pthread_cond_init(&t->written_cv, NULL);
	t->path = fs->opt.trace_path;
	t->max_bytes = fs->opt.trace_max;
	t->buf[0] = malloc(BUF_BYTES);
	t->buf[1] = malloc(BUF_BYTES);
	if (!t->buf[0] || !t->buf[1]) {
		snprintf(err, err_len, "%s", strerror(ENOMEM));
		goto fail;
	}
	rc = plan_header(t, fs->bundle, err, err_len);
	if (rc)
		goto fail;
	rc = t->fd = create_file(t->path, bundle_path, err, err_len);
	if (rc < 0)
		goto fail;
	clock_gettime(CLOCK_REALTIME, &rt);
	t->start_realtime_ns = (uint64_t)rt.tv_sec * 1000000000u +
			       (uint64_t)rt.tv_nsec;
	clock_gettime(CLOCK_MONOTONIC, &t->start);
	rc = write_header(t, fs->bundle, fs->opt.chunk_size);
	if (rc) {
		snprintf(err, err_len, "%s", strerror(-rc));
		goto fail;
	}
	fs->trace = t;
	return 0;
fail:
	trace_free(t);
	return rc;
}

void apbfs_trace_close(struct apbfs *fs)
{
	struct apbfs_trace *t = fs->trace;
	unsigned char h[APB_TRACE_HEADER_FIXED];
	uint64_t dropped;
	uint32_t flags;
	int rc = 0;

	if (!t)
		return;
	fs->trace = NULL;
	/* No other thread uses the cache any more: no lock is needed, and
	 * none is taken for I/O. */
	if (!(t->stop & APB_TRACE_F_WRITE_ERROR) && t->fill > 0) {
		rc = pwrite_all(t->fd, t->buf[t->active],
				(size_t)t->fill * APB_TRACE_RECORD_BYTES,
				t->header_bytes +
				t->handed_out * APB_TRACE_RECORD_BYTES);
		if (rc == 0)
			t->in_file += t->fill;
		else
			t->stop |= APB_TRACE_F_WRITE_ERROR;
	}
	dropped = t->dropped + (t->handed_out + t->fill - t->in_file);
	flags = APB_TRACE_F_COMPLETE | t->names_flag | t->stop;
	fixed_header(t, fs->opt.chunk_size,
		     (uint32_t)apb_bundle_count(fs->bundle), flags, t->in_file,
		     dropped, h);
	if (rc == 0)
		rc = pwrite_all(t->fd, h, sizeof(h), 0);
	if (rc == 0 && ftruncate(t->fd, (off_t)(t->header_bytes +
			t->in_file * APB_TRACE_RECORD_BYTES)) != 0)
		rc = -errno;
	if (close(t->fd) != 0 && rc == 0)
		rc = -errno;
	t->fd = -1;
	if (rc)
		fuse_log(FUSE_LOG_ERR, "apbundlefs: trace %s: could not be "
			 "finalized: %s; its header may say 0 records\n",
			 t->path, strerror(-rc));
	else if (dropped)
		fuse_log(FUSE_LOG_WARNING, "apbundlefs: trace %s: %llu "
			 "records, %llu accesses not recorded\n", t->path,
			 (unsigned long long)t->in_file,
			 (unsigned long long)dropped);
	trace_free(t);
}

/* ---- recording ------------------------------------------------------- */

/* Write the full buffer(s) while nobody else does; mu held, dropped while
 * writing. Returns the stop reason it set, or 0. */
static uint32_t write_full(struct apbfs_trace *t)
{
	uint32_t said = 0;

	apb_assert_held(&t->mu);
	while (t->fill == BUF_RECORDS && !t->writing &&
	       !(t->stop & APB_TRACE_F_WRITE_ERROR)) {
		unsigned full = t->active;
		uint64_t off = t->header_bytes +
			       t->handed_out * APB_TRACE_RECORD_BYTES;
		int rc;

		t->active ^= 1;
		t->fill = 0;
		t->handed_out += BUF_RECORDS;
		t->writing = true;
		apb_mutex_unlock(&t->mu);
		rc = pwrite_all(t->fd, t->buf[full], BUF_BYTES, off);
		apb_mutex_lock(&t->mu);
		t->writing = false;
		pthread_cond_broadcast(&t->written_cv);
		if (rc == 0) {
			t->in_file += BUF_RECORDS;
		} else if (!(t->stop & APB_TRACE_F_WRITE_ERROR)) {
			t->stop |= APB_TRACE_F_WRITE_ERROR;
			said = (uint32_t)-rc;
		}
	}
	return said;
}

void apbfs_trace_access(void *ctx, uint32_t model, uint64_t index,
			uint32_t count, enum apb_cache_access kind)
{
	struct apbfs_trace *t = ctx;
	struct apb_trace_record r = {
		.model = model, .chunk = index,
		.count = count > APB_TRACE_COUNT_MAX ? APB_TRACE_COUNT_MAX
						     : count,
		.kind = kind == APB_ACCESS_PREFETCH ? APB_TRACE_KIND_PREFETCH
						    : APB_TRACE_KIND_DEMAND,
	};
	bool full = false;
	uint32_t write_errno = 0;

	apb_mutex_lock(&t->mu);
	/* buf[active] is full until the write of the other one ends. */
	while (t->fill == BUF_RECORDS && t->writing && !t->stop)
		apb_cond_wait(&t->written_cv, &t->mu);
	if (!t->stop && t->handed_out + t->fill == t->max_records) {
		t->stop = APB_TRACE_F_FULL;
		full = true;
	}
	/* A model or chunk beyond the format's bits cannot come from a
	 * valid bundle (2^20 models, 2^53 bytes); counted, not recorded. */
	if (t->stop || model > APB_TRACE_MODEL_MAX ||
	    index > APB_TRACE_CHUNK_MAX) {
		t->dropped++;
	} else {
		r.time_ns = ns_since(&t->start);
		apb_trace_pack(&r, t->buf[t->active] +
				   (size_t)t->fill * APB_TRACE_RECORD_BYTES);
		t->fill++;
		write_errno = write_full(t);
	}
	apb_mutex_unlock(&t->mu);
	if (full)
		fuse_log(FUSE_LOG_WARNING, "apbundlefs: trace %s reached "
			 "trace_max (%llu bytes); recording stops, later "
			 "accesses are only counted\n", t->path,
			 (unsigned long long)t->max_bytes);
	if (write_errno)
		fuse_log(FUSE_LOG_ERR, "apbundlefs: trace %s: write failed: "
			 "%s; recording stops\n", t->path,
			 strerror((int)write_errno));
}
