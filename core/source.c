/*
 * source.c - a bundle's bytes (source.h): a local file, or an object behind
 * a URL read through core/remote.c. Every call dispatches on the kind with
 * a switch, so what each kind does and skips is in one place per call.
 *
 * File reads retry after EINTR and short reads until they have every byte
 * asked for; a file that ends first is -EIO. Vectored reads go out in
 * batches of READV_BATCH iovecs built on the stack, so a read never
 * allocates. A remote read hands the same iovecs (trimmed to the bytes
 * asked for, in batches of READV_BATCH) to apb_remote_preadv(), which
 * makes one ranged GET of each run of up to 8 MiB: a cache run of adjacent
 * chunks is one request.
 */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "apbundle/bundle.h"
#include "disktier.h"
#include "error.h"
#include "remote.h"

#define READV_BATCH 64 /* iovecs per preadv(), on the stack */

enum source_kind { SOURCE_FILE, SOURCE_REMOTE };

/* A remote source's part that reads change: kept out of struct apb_source,
 * which readers see as const. */
struct remote_part {
	struct apb_remote *r;
	struct apb_disktier *tier; /* cache_dir=, or NULL */
	atomic_bool changed;       /* a read saw -ESTALE or -ENOENT */
	/* the caller's log (apb_bundle_options), copied: its struct may not
	 * outlive the open */
	void (*log)(void *arg, enum apb_log_level level, const char *msg);
	void *log_arg;
};

struct apb_source {
	enum source_kind kind;
	int fd;                    /* file: O_RDONLY | O_CLOEXEC; else -1 */
	int dfd;                   /* file: the same with O_DIRECT, or -1 */
	struct stat st;            /* taken once at open; remote: synthesized */
	uint8_t head[APB_HEAD_LEN];/* file */
	const uint8_t *headp;      /* head, or the remote's head bytes */
	size_t head_len;           /* file: min(st_size, APB_HEAD_LEN) */
	struct remote_part *rem;   /* remote */
};

/* Fill iov[*i] from byte *skip on, and the entries after it, with at most
 * want bytes, into v (at most READV_BATCH entries, none empty). Returns the
 * number of entries. */
static int readv_batch(const struct iovec *iov, int iovcnt, int i, size_t skip,
		       size_t want, struct iovec *v)
{
	int n = 0;

	for (; i < iovcnt && n < READV_BATCH && want > 0; i++, skip = 0) {
		size_t len = iov[i].iov_len - skip;

		if (len == 0)
			continue;
		if (len > want)
			len = want;
		v[n].iov_base = (char *)iov[i].iov_base + skip;
		v[n].iov_len = len;
		want -= len;
		n++;
	}
	return n;
}

/* Read exactly want bytes at pos into iov from byte skip of iov[0] on,
 * resuming after short reads and EINTR. Returns want or a negative errno. */
static long preadv_full(int fd, uint64_t pos, const struct iovec *iov,
			int iovcnt, size_t skip, size_t want)
{
	struct iovec v[READV_BATCH];
	size_t done = 0; /* skip: bytes of iov[i] already read or passed */
	int i = 0;

	while (done < want) {
		ssize_t r;
		int n;

		for (; i < iovcnt && skip >= iov[i].iov_len; i++)
			skip -= iov[i].iov_len;
		n = readv_batch(iov, iovcnt, i, skip, want - done, v);
		r = preadv(fd, v, n, (off_t)(pos + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		done += (size_t)r;
		skip += (size_t)r;
	}
	return (long)done;
}


/* A remote read's error as the source reports it: the object changed or
 * went away (remote.c logged which) is -EIO now and for every later read;
 * a range outside the object cannot be asked for (the bundle checked its
 * extents against the size) and is the source ending first, -EIO. */
static long remote_error(const struct apb_source *s, long rc)
{
	if (rc == -ESTALE || rc == -ENOENT) {
		atomic_store(&s->rem->changed, true);
		return -EIO;
	}
	return rc == -EINVAL ? -EIO : rc;
}

/* The disk tier's way to the server. */
static ssize_t tier_fetch(void *arg, const struct iovec *iov, int iovcnt,
			  uint64_t off)
{
	return apb_remote_preadv(arg, iov, iovcnt, off);
}

/* want bytes at pos into iov from byte skip of iov[0] on, from the remote
 * (through the disk tier when there is one): the iovecs trimmed to those
 * bytes, READV_BATCH at a time. */
static long remote_preadv(const struct apb_source *s, uint64_t pos,
			  const struct iovec *iov, int iovcnt, size_t skip,
			  size_t want)
{
	struct iovec v[READV_BATCH];
	size_t done = 0;
	int i = 0;

	while (done < want) {
		size_t batch = 0;
		ssize_t r;
		int n;

		if (atomic_load(&s->rem->changed))
			return -EIO;
		for (; i < iovcnt && skip >= iov[i].iov_len; i++)
			skip -= iov[i].iov_len;
		n = readv_batch(iov, iovcnt, i, skip, want - done, v);
		for (int k = 0; k < n; k++)
			batch += v[k].iov_len;
		if (batch == 0)
			return -EIO; /* iovecs shorter than want */
		r = s->rem->tier ? apb_disktier_preadv(s->rem->tier, tier_fetch,
						       s->rem->r, pos + done, v, n)
				 : apb_remote_preadv(s->rem->r, v, n, pos + done);
		if (r < 0)
			return remote_error(s, r);
		done += batch;
		skip += batch;
	}
	return (long)done;
}

int apb_source_pread(const struct apb_source *s, void *buf, size_t len,
		     uint64_t off)
{
	struct iovec v = {.iov_base = buf, .iov_len = len};
	long r = -EINVAL;

	switch (s->kind) {
	case SOURCE_FILE:
		r = preadv_full(s->fd, off, &v, 1, 0, len);
		break;
	case SOURCE_REMOTE:
		/* The open request brought the head: a manifest inside it
		 * costs no second round trip. */
		if (off <= s->head_len && len <= s->head_len - off) {
			memcpy(buf, s->headp + off, len);
			return 0;
		}
		r = remote_preadv(s, off, &v, 1, 0, len);
		break;
	}
	return r < 0 ? (int)r : 0;
}

static int open_file(struct apb_source *s, const char *path, char *err,
		     size_t err_len)
{
	int rc;

	/* O_NONBLOCK: opening a FIFO must not wait for a writer; the type
	 * check below refuses it, and reads of a regular file ignore it. */
	s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (s->fd < 0) {
		rc = -errno;
		return apb_fail(rc, err, err_len, "cannot open: %s",
				strerror(-rc));
	}
	if (fstat(s->fd, &s->st) != 0) {
		rc = -errno;
		return apb_fail(rc, err, err_len, "cannot stat: %s",
				strerror(-rc));
	}
	if (!S_ISREG(s->st.st_mode))
		return apb_errf(err, err_len, "not a regular file");
	s->head_len = (uint64_t)s->st.st_size < APB_HEAD_LEN
			      ? (size_t)s->st.st_size : APB_HEAD_LEN;
	s->headp = s->head;
	rc = apb_source_pread(s, s->head, s->head_len, 0);
	if (rc)
		return apb_fail(rc, err, err_len, "cannot read the header: %s",
				strerror(-rc));
	return 0;
}

/* The bundle API's log levels are the remote's, named for the public. */
static void remote_log(void *arg, enum apb_remote_log_level level,
		       const char *msg)
{
	const struct remote_part *rp = arg;
	enum apb_log_level l = APB_LOG_ERROR;

	switch (level) {
	case APB_REMOTE_LOG_ERROR: l = APB_LOG_ERROR; break;
	case APB_REMOTE_LOG_WARN: l = APB_LOG_WARN; break;
	case APB_REMOTE_LOG_RETRY: l = APB_LOG_RETRY; break;
	}
	rp->log(rp->log_arg, l, msg);
}

static enum apb_remote_style remote_style(enum apb_s3_style style)
{
	switch (style) {
	case APB_S3_STYLE_PATH: return APB_REMOTE_STYLE_PATH;
	case APB_S3_STYLE_VIRTUAL: return APB_REMOTE_STYLE_VIRTUAL;
	case APB_S3_STYLE_AUTO: break;
	}
	return APB_REMOTE_STYLE_AUTO;
}

static int open_remote(struct apb_source *s, const char *url,
		       const struct apb_bundle_options *o, char *err,
		       size_t err_len)
{
	struct apb_remote_options ro = {0};
	struct timespec now;
	size_t n;
	const void *head;
	int rc;

	s->rem = calloc(1, sizeof(*s->rem));
	if (!s->rem)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	if (o) {
		ro.s3_endpoint = o->s3_endpoint;
		ro.s3_region = o->s3_region;
		ro.s3_profile = o->s3_profile;
		ro.s3_style = remote_style(o->s3_style);
	}
	if (o && o->log) {
		s->rem->log = o->log;
		s->rem->log_arg = o->log_arg;
		ro.log = remote_log;
		ro.log_arg = s->rem;
	}
	rc = apb_remote_open(url, &ro, &s->rem->r, err, err_len);
	if (rc) {
		/* The remote names the URL (redacted); the caller does
		 * (bundle.h). */
		char *shown = apb_bundle_redact(url);

		n = shown ? strlen(shown) : 0;
		if (shown && err && strncmp(err, shown, n) == 0 && err[n] == ':')
			memmove(err, err + n + 2, strlen(err + n + 2) + 1);
		free(shown);
		return rc;
	}
	if (o && o->cache_dir) {
		/* the URL requests go to: an s3:// URL's names the endpoint
		 * the remote resolved (option, environment or profile) */
		struct apb_disktier_config tc = {
			.dir = o->cache_dir, .capacity = o->cache_dir_size,
			.policy = o->cache_dir_eviction,
			.url = apb_remote_url(s->rem->r),
			.identity = apb_remote_identity(s->rem->r),
			.size = apb_remote_size(s->rem->r),
			.log = s->rem->log, .log_arg = s->rem->log_arg,
		};

		rc = apb_disktier_open(&tc, &s->rem->tier, err, err_len);
		if (rc)
			return rc;
	}
	head = apb_remote_head(s->rem->r, &s->head_len);
	s->headp = head;
	clock_gettime(CLOCK_REALTIME, &now);
	s->st.st_mode = S_IFREG | 0444;
	s->st.st_nlink = 1;
	s->st.st_size = (off_t)apb_remote_size(s->rem->r);
	s->st.st_atim = s->st.st_mtim = s->st.st_ctim = now;
	return 0;
}

int apb_source_open(const char *where, const struct apb_bundle_options *o,
		    struct apb_source **out, char *err, size_t err_len)
{
	struct apb_source *s = calloc(1, sizeof *s);
	int rc;

	*out = NULL;
	if (!s)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	s->fd = s->dfd = -1;
	s->kind = apb_bundle_is_url(where) ? SOURCE_REMOTE : SOURCE_FILE;
	switch (s->kind) {
	case SOURCE_FILE:
		rc = open_file(s, where, err, err_len);
		break;
	case SOURCE_REMOTE:
		rc = open_remote(s, where, o, err, err_len);
		break;
	default:
		rc = -EINVAL;
	}
	if (rc) {
		apb_source_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

void apb_source_close(struct apb_source *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	if (s->dfd >= 0)
		close(s->dfd);
	if (s->rem) {
		apb_disktier_close(s->rem->tier);
		apb_remote_close(s->rem->r);
	}
	free(s->rem);
	free(s);
}

uint64_t apb_source_size(const struct apb_source *s)
{
	return (uint64_t)s->st.st_size;
}

const uint8_t *apb_source_head(const struct apb_source *s, size_t *len)
{
	*len = s->head_len;
	return s->headp;
}

const struct stat *apb_source_stat(const struct apb_source *s)
{
	return &s->st;
}

int apb_source_remote_stats(const struct apb_source *s,
			    struct apb_bundle_remote_stats *st)
{
	struct apb_remote_stats rs;

	switch (s->kind) {
	case SOURCE_FILE:
		break;
	case SOURCE_REMOTE:
		apb_remote_get_stats(s->rem->r, &rs);
		*st = (struct apb_bundle_remote_stats){
			.requests = rs.requests, .retries = rs.retries,
			.connects = rs.connects, .bytes = rs.bytes,
			.errors = rs.errors,
			.changed = atomic_load(&s->rem->changed)};
		return 0;
	}
	return -ENOENT;
}

int apb_source_disk_tier_stats(const struct apb_source *s,
			       struct apb_bundle_disk_tier_stats *st)
{
	if (s->kind != SOURCE_REMOTE || !s->rem->tier)
		return -ENOENT;
	apb_disktier_stats(s->rem->tier, st);
	return 0;
}

bool apb_source_is_remote(const struct apb_source *s)
{
	return s->kind == SOURCE_REMOTE;
}

/* The file's reads: the leading iovecs O_DIRECT can take through dfd, the
 * rest through the page cache. */
static long file_preadv(const struct apb_source *s, uint64_t pos,
			const struct iovec *iov, int iovcnt, size_t skip,
			size_t want)
{
	size_t direct = 0;
	long r;
	int n = 0;

	if (s->dfd >= 0 && pos % APB_ALIGN == 0) {
		for (; n < iovcnt && direct < want; n++) {
			size_t sk = n == 0 ? skip : 0;
			size_t len = iov[n].iov_len - sk;

			if (((uintptr_t)iov[n].iov_base + sk) % APB_ALIGN ||
			    len % APB_ALIGN || len > want - direct)
				break;
			direct += len;
		}
	}
	if (direct > 0) {
		r = preadv_full(s->dfd, pos, iov, n, skip, direct);
		if (r == -EINVAL) /* stricter alignment than we know of */
			direct = 0, n = 0;
		else if (r < 0)
			return r;
	}
	if (direct == want)
		return (long)want;
	r = preadv_full(s->fd, pos + direct, iov + n, iovcnt - n, n ? 0 : skip,
			want - direct);
	return r < 0 ? r : (long)want;
}

long apb_source_preadv(const struct apb_source *s, uint64_t pos,
		       const struct iovec *iov, int iovcnt, size_t skip,
		       size_t want)
{
	while (iovcnt > 0 && skip > 0 && skip >= iov[0].iov_len) {
		skip -= iov[0].iov_len;
		iov++;
		iovcnt--;
	}
	switch (s->kind) {
	case SOURCE_FILE:
		return file_preadv(s, pos, iov, iovcnt, skip, want);
	case SOURCE_REMOTE:
		return remote_preadv(s, pos, iov, iovcnt, skip, want);
	}
	return -EINVAL;
}

int apb_source_direct_io(struct apb_source *s)
{
	char path[64];
	struct stat st;
	int fd;

	switch (s->kind) {
	case SOURCE_FILE:
		break;
	case SOURCE_REMOTE: /* no page cache to keep the bytes out of */
		return -EINVAL;
	}
	if (s->dfd >= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0 || st.st_dev != s->st.st_dev ||
	    st.st_ino != s->st.st_ino) {
		close(fd);
		return -ESTALE;
	}
	s->dfd = fd;
	return 0;
}

bool apb_bundle_is_url(const char *s)
{
	return strncasecmp(s, "http://", 7) == 0 ||
	       strncasecmp(s, "https://", 8) == 0 ||
	       strncasecmp(s, "s3://", 5) == 0;
}
