/*
 * disktier.c - the disk tier (disktier.h): an object's bytes kept in files
 * under cache_dir, bounded by size, verified when read back.
 *
 * LAYOUT
 *
 * The object is cut into extents of APB_DISKTIER_EXTENT (1 MiB) bytes, the
 * last one shorter. Extent k lives in
 *
 *     cache_dir/<U>-<V>/<k as 16 hex digits>
 *
 * where U is the XXH3-64 of the URL requests go to (an s3:// URL resolved
 * to its endpoint's) without credentials, and V the XXH3-64 of U, the identity (ETag, or
 * Last-Modified) and the size: a changed object gets a new directory, so
 * the bytes of one version are never read as another's. At open, the
 * directories of the same U with another V (older versions of this URL)
 * are deleted: nothing can read them any more. Directories of other URLs
 * are left in place (another mount may be using them) but count toward the
 * bound and are evicted like this object's extents.
 *
 * An extent file is a header of APB_DISKTIER_HEADER (4 KiB, so the payload
 * stays page-aligned) and the extent's bytes. The header (struct header)
 * holds a magic, the version, the XXH3-128 of the whole key (U, identity,
 * size), the extent's index and length, the XXH3-64 of each
 * APB_DISKTIER_BLOCK (4 KiB) of the payload, and its own XXH3-64. A read
 * checks the header and the blocks it reads, so a 64 KiB read of a cached
 * extent reads and hashes 64 KiB, not the whole megabyte; 4 KiB blocks,
 * not larger ones, because page-ins start at cache chunks of a model,
 * which are 4 KiB-aligned in the object but not aligned to anything
 * larger: a larger block would make most page-ins read and hash bytes
 * around them.
 *
 * CRASHES AND CORRUPTION
 *
 * A file is written whole under a temporary name (.tmp-PID-N, unique per
 * call) and renamed onto its name: a reader sees no file or a complete
 * one. There is no fsync: after a power loss a renamed file may hold
 * zeros or be short; the checks catch that like any corruption. A file
 * that fails a check (or cannot be read) is unlinked, counted in errors
 * and its bytes fetched again: its bytes never reach a reader. At open a
 * file of the wrong size is dropped the same way (counted), and temporary
 * files of processes that no longer exist are deleted.
 *
 * BOUND AND EVICTION
 *
 * cache_dir_size bounds the bytes of extent files (header and payload,
 * rounded up to 4 KiB) this mount knows of: its own and those it found at
 * open. Room is made before a file is written by evicting files chosen by
 * core/evict.c under the mount's eviction= policy; each extent embeds a
 * struct apb_evict_node, as a cache chunk does. A read in progress holds
 * its extent out of the set (refs), as the cache's gets hold chunks. An
 * extent larger than what eviction can free is not written. At open the
 * files found enter the set oldest first (by mtime).
 *
 * WRITE FAILURES
 *
 * A write that fails (ENOSPC, EDQUOT, EROFS, EACCES, EIO, ...) counts one
 * error, logs one line and stops the tier writing for the rest of the
 * mount: what is on disk is still read, missing extents are fetched from
 * the server straight into the reader's buffers. Reads never fail because
 * of the tier.
 *
 * LOCKING
 *
 * One mutex, mu, guards the extents' states, refs and generations, the
 * evictable set, the byte count, the counters and the directory fd's
 * creation. No I/O on extent files happens under it, except the unlink of
 * a victim or of a bad file (one syscall), the mkdir of the object's
 * directory (once) and the few log lines (bounded per mount).
 * An extent being fetched is LOADING: a second reader of it waits on cv
 * instead of fetching it again, and takes it from disk after (or fetches it
 * itself if the load failed). A file unlinked while another thread reads
 * it stays readable through its open descriptor. Two mounts sharing a
 * cache_dir at once do not corrupt each other (each file is written under
 * a unique name and renamed, and verified when read), but each bounds only
 * the files it knows of: together they may hold up to the sum of their
 * sizes until the next open re-indexes the directory.
 *
 * MEMORY
 *
 * One struct extent (96 bytes on LP64) per extent of the object: 96 KiB
 * per GiB of object; plus one per file of another object found at open,
 * plus the set's own (LFU: 8 bytes per entry), plus HCACHE (16) checked
 * headers, 2.1 KiB each, so a sequential reader's next page-in in the
 * same extent skips the header read. A fetch allocates its bounce buffer
 * (the bytes of its extents outside the reader's range, at most
 * BOUNCE_MAX, 4 MiB, for all fetches in flight together; a fetch that
 * would go past it is not written to disk, only read into the reader's
 * buffers); a read from disk bounces its partial blocks (under two check
 * blocks) through the stack; a read of more than SMALL_IOV iovecs
 * allocates its iovec arrays.
 */
#include "disktier.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "error.h"
#include "evict.h"
#include "lock.h"

#define EXTENT APB_DISKTIER_EXTENT
#define BLOCK APB_DISKTIER_BLOCK
#define HEADER APB_DISKTIER_HEADER
#define BLOCKS_PER_EXTENT (EXTENT / BLOCK)
#define RUN_MAX 8u        /* extents fetched in one call */
#define MAGIC "APBTIER"   /* 8 bytes with its NUL */
#define VERSION 2u        /* 1: 64 KiB blocks */
#define LOG_BAD_MAX 8u    /* bad files named in the log, per mount */
#define DIRNAME_LEN 34u   /* "%016x-%016x" and its NUL */
#define SMALL_IOV 64
#define HCACHE 16         /* checked headers kept, 2.1 KiB each */
#define BOUNCE_MAX (4u << 20) /* bounce bytes of fetches in flight, at most */

_Static_assert(EXTENT % BLOCK == 0, "an extent is whole blocks");

enum ext_state { EXT_EMPTY = 0, EXT_LOADING, EXT_PRESENT };

struct header {
	char magic[8];
	uint32_t version;
	uint32_t header_len;
	uint64_t key_lo, key_hi;  /* XXH3-128 of the whole key */
	uint64_t index;
	uint32_t extent_size;
	uint32_t len;             /* payload bytes */
	uint32_t block_size;
	uint32_t nblocks;
	uint64_t block_sum[BLOCKS_PER_EXTENT];
	uint64_t header_sum;      /* XXH3-64 of everything above */
};
_Static_assert(sizeof(struct header) <= HEADER, "the header fits its block");

/* A file's first HEADER bytes, aligned for O_DIRECT. */
union header_block {
	struct header h;
	_Alignas(APB_ALIGN) char bytes[HEADER];
};

struct extent {
	struct apb_evict_node node;
	uint64_t index;           /* the file's extent index */
	uint32_t bytes;           /* its size on disk while PRESENT */
	uint32_t dir;             /* 0: this object's; else foreign dir + 1 */
	uint32_t gen;             /* bumped on every load: a stale holder's
				   * drop must not drop a newer file */
	uint16_t refs;            /* readers holding it out of the set */
	uint8_t state;
	bool fresh;               /* written by this mount: its pages may be
				   * in the page cache, dirty */
};

/* A checked header, kept so that the next read of the same file (a
 * sequential reader's next page-in starts in the extent its last one
 * ended in) reads only the payload: one I/O instead of two. */
struct header_slot {
	uint64_t index;
	uint32_t gen;             /* the extent's generation it was read at */
	bool valid;
	struct header h;
};

struct foreign_dir {
	char name[DIRNAME_LEN];
	uint32_t files;           /* its files still indexed */
};

struct apb_disktier {
	int rootfd;               /* cache_dir */
	int dirfd;                /* this object's directory; -1 until made */
	char *dir;                /* cache_dir as given, for messages */
	char dirname[DIRNAME_LEN];
	XXH128_hash_t key;
	uint64_t size;
	uint64_t nextents;
	struct extent *ext;       /* nextents of them */
	struct extent *foreign;   /* nforeign files of other objects */
	uint32_t nforeign;
	struct foreign_dir *fdirs;
	uint32_t nfdirs;
	atomic_uint_fast64_t tmp_seq;
	atomic_bool direct;       /* O_DIRECT reads, until refused */
	void (*log)(void *arg, enum apb_log_level level, const char *msg);
	void *log_arg;

	struct apb_mutex mu;
	pthread_cond_t cv;        /* an extent left LOADING */
	struct apb_evict *set;
	uint64_t used;
	uint64_t capacity;
	size_t bounce;            /* bounce bytes of the fetches in flight */
	uint32_t files;           /* PRESENT extents, in the set or held */
	uint32_t slots;           /* the set's cap: files of a whole extent
				   * that fit the capacity */
	bool writing;
	uint32_t bad_logged;
	struct apb_bundle_disk_tier_stats st;
	struct header_slot hcache[HCACHE]; /* slot: index % HCACHE */
};

/* ---- messages --------------------------------------------------------- */

static void tier_log(const struct apb_disktier *t, enum apb_log_level level,
		     const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tier_log(const struct apb_disktier *t, enum apb_log_level level,
		     const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (t->log)
		t->log(t->log_arg, level, msg);
	else
		fprintf(stderr, "%s\n", msg);
}

/* ---- iovec arithmetic ------------------------------------------------- */

/* The iovecs covering bytes [off, off + len) of iov into out, which has
 * room for cnt entries. Returns the count. */
static int iov_slice(const struct iovec *iov, int cnt, size_t off, size_t len,
		     struct iovec *out)
{
	int n = 0;

	for (int i = 0; i < cnt && len > 0; i++) {
		size_t l = iov[i].iov_len;

		if (off >= l) {
			off -= l;
			continue;
		}
		size_t take = l - off < len ? l - off : len;
		out[n].iov_base = (char *)iov[i].iov_base + off;
		out[n].iov_len = take;
		n++;
		len -= take;
		off = 0;
	}
	return n;
}

/* The iovecs of a range rounded out around a reader's: head bytes of
 * bounce, the reader's rcnt iovecs rv, then tail bytes of bounce after
 * the head, into out (room for rcnt + 2). Returns the count. */
static int iov_around(struct iovec *out, char *bounce, size_t head,
		      const struct iovec *rv, int rcnt, size_t tail)
{
	int n = 0;

	if (head)
		out[n++] = (struct iovec){bounce, head};
	for (int i = 0; i < rcnt; i++)
		out[n++] = rv[i];
	if (tail)
		out[n++] = (struct iovec){bounce + head, tail};
	return n;
}

/* The XXH3-64 of each BLOCK of the first len bytes of iov (the last block
 * may be short) into out, walking the iovecs once. */
static void block_sums(const struct iovec *iov, int n, size_t len,
		       uint64_t *out)
{
	XXH3_state_t st;
	size_t off = 0, done = 0; /* off: bytes of iov[i] passed */
	int i = 0;

	while (done < len) {
		size_t bl = len - done < BLOCK ? len - done : BLOCK;
		size_t need = bl;

		while (i < n && off == iov[i].iov_len)
			i++, off = 0;
		assert(i < n);
		if (iov[i].iov_len - off >= bl) { /* the usual case */
			*out++ = XXH3_64bits((char *)iov[i].iov_base + off, bl);
			off += bl;
			done += bl;
			continue;
		}
		XXH3_64bits_reset(&st);
		while (need > 0) {
			size_t take;

			while (i < n && off == iov[i].iov_len)
				i++, off = 0;
			assert(i < n);
			take = iov[i].iov_len - off < need ? iov[i].iov_len - off
							   : need;
			XXH3_64bits_update(&st, (char *)iov[i].iov_base + off,
					   take);
			off += take;
			need -= take;
		}
		*out++ = XXH3_64bits_digest(&st);
		done += bl;
	}
}

/* Exactly the bytes of iov at off, resuming short transfers and EINTR,
 * IOV_MAX iovecs at a time; iov is consumed (modified). 0, -EIO for a
 * file that ends first, or the negative errno. */
static int io_full(int fd, struct iovec *iov, int cnt, off_t off, bool write)
{
	while (cnt > 0) {
		int n = cnt < IOV_MAX ? cnt : IOV_MAX;
		ssize_t r = write ? pwritev(fd, iov, n, off)
				  : preadv(fd, iov, n, off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return write ? -ENOSPC : -EIO;
		off += r;
		while (cnt > 0 && (size_t)r >= iov[0].iov_len) {
			r -= (ssize_t)iov[0].iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov[0].iov_base = (char *)iov[0].iov_base + r;
			iov[0].iov_len -= (size_t)r;
		}
		while (cnt > 0 && iov[0].iov_len == 0)
			iov++, cnt--;
	}
	return 0;
}

/* ---- names and keys --------------------------------------------------- */

int apb_disktier_url_key(const char *url, char *out, size_t out_len)
{
	const char *auth = strstr(url, "://");
	const char *at, *end;
	size_t pre, n = strlen(url);

	if (auth) {
		auth += 3;
		end = auth + strcspn(auth, "/?#");
		at = memchr(auth, '@', (size_t)(end - auth));
		/* the last '@' of the authority ends the userinfo */
		while (at) {
			const char *more = memchr(at + 1, '@',
						  (size_t)(end - at - 1));
			if (!more)
				break;
			at = more;
		}
		if (at) {
			pre = (size_t)(auth - url);
			if (pre + strlen(at + 1) + 1 > out_len)
				return -ENAMETOOLONG;
			memcpy(out, url, pre);
			strcpy(out + pre, at + 1);
			return 0;
		}
	}
	if (n + 1 > out_len)
		return -ENAMETOOLONG;
	memcpy(out, url, n + 1);
	return 0;
}

static void extent_name(uint64_t index, char out[17])
{
	snprintf(out, 17, "%016" PRIx64, index);
}

/* 16 lower-case hex digits, and nothing else, into *v. */
static bool parse_hex16(const char *s, uint64_t *v)
{
	uint64_t x = 0;

	for (int i = 0; i < 16; i++) {
		char c = s[i];
		int d = c >= '0' && c <= '9' ? c - '0'
			: c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return false;
		x = x << 4 | (uint64_t)d;
	}
	*v = x;
	return s[16] == '\0' || s[16] == '-';
}

static uint32_t extent_len(const struct apb_disktier *t, uint64_t k)
{
	uint64_t start = k * EXTENT;

	return (uint32_t)(t->size - start < EXTENT ? t->size - start : EXTENT);
}

static uint32_t file_bytes(uint32_t len)
{
	return HEADER + (len + 4095u) / 4096u * 4096u;
}

/* ---- the evictable set (mu held) -------------------------------------- */

static struct extent *extent_of(struct apb_evict_node *n)
{
	return (struct extent *)((char *)n - offsetof(struct extent, node));
}

/* Unlink the file of e, popped from the set as a victim. */
static void evict_one(struct apb_disktier *t, struct extent *e)
{
	char path[DIRNAME_LEN + 18];
	char name[17];

	apb_assert_held(&t->mu);
	extent_name(e->index, name);
	if (e->dir == 0) {
		if (t->dirfd >= 0)
			unlinkat(t->dirfd, name, 0);
	} else {
		struct foreign_dir *fd = &t->fdirs[e->dir - 1];

		snprintf(path, sizeof(path), "%s/%s", fd->name, name);
		unlinkat(t->rootfd, path, 0);
		if (--fd->files == 0)
			unlinkat(t->rootfd, fd->name, AT_REMOVEDIR);
	}
	t->used -= e->bytes;
	t->files--;
	e->state = EXT_EMPTY;
	t->st.evictions++;
}

/* Make room for one file of bytes more: true and the file counted, or
 * false when evicting everything evictable would not be enough. */
static bool reserve(struct apb_disktier *t, uint32_t bytes)
{
	apb_assert_held(&t->mu);
	while (t->used + bytes > t->capacity || t->files >= t->slots) {
		struct apb_evict_node *n = apb_evict_pop_victim(t->set);

		if (!n)
			return false;
		evict_one(t, extent_of(n));
	}
	t->used += bytes;
	t->files++;
	return true;
}

/* e (this object's extent) now has a file on disk of bytes bytes, its
 * room already reserved. */
static void set_present(struct apb_disktier *t, struct extent *e,
			uint32_t bytes)
{
	apb_assert_held(&t->mu);
	e->state = EXT_PRESENT;
	e->bytes = bytes;
	e->fresh = true;
	e->gen++;
	apb_evict_node_init(t->set, &e->node, 0, e->index);
	apb_evict_touch(t->set, &e->node);
	if (e->refs == 0)
		apb_evict_insert(t->set, &e->node);
}

/* Take a reader's hold on PRESENT e. */
static void hold(struct apb_disktier *t, struct extent *e)
{
	apb_assert_held(&t->mu);
	if (e->refs++ == 0)
		apb_evict_remove(t->set, &e->node);
	apb_evict_touch(t->set, &e->node);
}

/* Let go of e: back into the set if it is still on disk; if it was
 * dropped meanwhile, its history goes too. */
static void unhold(struct apb_disktier *t, struct extent *e)
{
	apb_assert_held(&t->mu);
	if (--e->refs > 0)
		return;
	if (e->state == EXT_PRESENT)
		apb_evict_insert(t->set, &e->node);
	else
		apb_evict_forget(t->set, &e->node);
}

/* The file of held e (generation gen) is gone or bad: e is EMPTY, unless a
 * newer file replaced it meanwhile. Returns whether it was this one. */
static bool drop(struct apb_disktier *t, struct extent *e, uint32_t gen)
{
	apb_assert_held(&t->mu);
	assert(e->refs > 0);
	if (e->state != EXT_PRESENT || e->gen != gen)
		return false;
	t->used -= e->bytes;
	t->files--;
	e->state = EXT_EMPTY;
	return true;
}

/* The file of held e (generation gen) failed a check with rc: count it,
 * say so (a few times per mount), drop it unless a newer one replaced it
 * meanwhile. */
static void drop_bad(struct apb_disktier *t, struct extent *e, uint32_t gen,
		     int rc)
{
	char name[17];
	bool log;

	apb_assert_held(&t->mu);
	t->st.errors++;
	log = t->bad_logged < LOG_BAD_MAX;
	t->bad_logged += log;
	if (drop(t, e, gen)) {
		extent_name(e->index, name);
		unlinkat(t->dirfd, name, 0);
	}
	if (log)
		tier_log(t, APB_LOG_WARN,
			 "disk tier %s: extent file %s/%016" PRIx64 " %s; "
			 "dropped, its bytes fetched again%s",
			 t->dir, t->dirname, e->index,
			 rc == -EBADMSG ? "failed its check"
					: "could not be read",
			 t->bad_logged == LOG_BAD_MAX
				 ? " (further bad files not logged)" : "");
}

/* A write failed with rc: stop writing, say so once. */
static void write_failed(struct apb_disktier *t, int rc)
{
	apb_assert_held(&t->mu);
	t->st.errors++;
	if (!t->writing)
		return;
	t->writing = false;
	tier_log(t, APB_LOG_ERROR,
		 "disk tier %s: cannot write: %s; no more extents are written "
		 "to it by this mount (reads go to the server)", t->dir,
		 strerror(-rc));
}

/* ---- reading an extent from disk -------------------------------------- */

/* The check blocks [*b0, *b1) of extent k that bytes [lo, hi) of the
 * object touch. */
static void block_span(uint64_t k, uint64_t lo, uint64_t hi, uint64_t *b0,
		       uint64_t *b1)
{
	uint64_t ks = k * EXTENT;

	*b0 = (lo - ks) / BLOCK;
	*b1 = (hi - ks + BLOCK - 1) / BLOCK;
}

/* The sums of check blocks [b0, b1) from the checked header of extent k's
 * file at generation gen, if kept, into out: only what the read checks
 * (8 bytes per block read), not the whole 2.1 KiB header, is copied under
 * mu, held (the reader's, taken to hold the extent). */
static bool header_get(struct apb_disktier *t, uint64_t k, uint32_t gen,
		       uint64_t b0, uint64_t b1, uint64_t *out)
{
	struct header_slot *hs = &t->hcache[k % HCACHE];
	bool hit;

	apb_assert_held(&t->mu);
	hit = hs->valid && hs->index == k && hs->gen == gen;
	if (hit)
		memcpy(out, hs->h.block_sum + b0,
		       sizeof(*out) * (size_t)(b1 - b0));
	return hit;
}

static void header_put(struct apb_disktier *t, uint64_t k, uint32_t gen,
		       const struct header *h)
{
	struct header_slot *hs = &t->hcache[k % HCACHE];

	apb_mutex_lock(&t->mu);
	*hs = (struct header_slot){.index = k, .gen = gen, .valid = true,
				   .h = *h};
	apb_mutex_unlock(&t->mu);
}

static int check_header(const struct apb_disktier *t, const struct header *h,
			uint64_t k)
{
	uint32_t len = extent_len(t, k);

	if (memcmp(h->magic, MAGIC, sizeof(h->magic)) != 0 ||
	    h->version != VERSION || h->header_len != HEADER ||
	    h->header_sum != XXH3_64bits(h, offsetof(struct header,
						    header_sum)) ||
	    h->key_lo != t->key.low64 || h->key_hi != t->key.high64 ||
	    h->index != k || h->extent_size != EXTENT || h->len != len ||
	    h->block_size != BLOCK ||
	    h->nblocks != (len + BLOCK - 1) / BLOCK)
		return -EBADMSG;
	return 0;
}

/* Whether a read at file offset off of the iovecs v can bypass the page
 * cache: O_DIRECT wants the offset, every buffer and every length aligned
 * (APB_ALIGN, 4 KiB: what the cache's slots and a version 1 bundle's
 * model offsets are). */
static bool aligned_io(uint64_t off, const struct iovec *v, int n)
{
	if (off % APB_ALIGN)
		return false;
	for (int i = 0; i < n; i++)
		if ((uintptr_t)v[i].iov_base % APB_ALIGN ||
		    v[i].iov_len % APB_ALIGN)
			return false;
	return true;
}

/* Read the header (into hbuf; NULL: not wanted) and the payload bytes
 * [rs, re) of extent k's file into the iovecs v (n of them, n + 1 entries
 * of room): one preadv when rs is the extent's start, else two. O_DIRECT
 * when the tier may and everything is aligned, so a cold read is one large
 * I/O per call and the page cache does not keep a second copy of what the
 * chunk cache holds; buffered otherwise, or when the filesystem refuses it
 * (tmpfs), or for a file this mount wrote (fresh): its pages are likely
 * still in the page cache, dirty, and an O_DIRECT read would first wait
 * for their writeback (a sequential reader's next page-in starts in the
 * extent its last one fetched and wrote). 0, -ENOENT for no file, or a
 * negative errno. */
static int read_file(struct apb_disktier *t, uint64_t k, bool fresh,
		     char *hbuf, uint64_t rs_off, struct iovec *v, int n)
{
	bool direct = !fresh && atomic_load(&t->direct) &&
		      aligned_io(rs_off, v, n);
	char name[17];
	int fd, rc;

	if (t->dirfd < 0)
		return -ENOENT;
	extent_name(k, name);
	for (;;) {
		fd = openat(t->dirfd, name,
			    O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
		if (fd < 0 && errno == EINVAL && direct) {
			atomic_store(&t->direct, false); /* tmpfs */
			direct = false;
			continue;
		}
		if (fd < 0)
			return errno == ENOENT ? -ENOENT : -errno;
		if (!hbuf) {
			rc = io_full(fd, v, n, (off_t)rs_off, false);
		} else if (rs_off == HEADER) {
			memmove(v + 1, v, sizeof(*v) * (size_t)n);
			v[0] = (struct iovec){hbuf, HEADER};
			rc = io_full(fd, v, n + 1, 0, false);
		} else {
			struct iovec hv = {hbuf, HEADER};

			rc = io_full(fd, &hv, 1, 0, false);
			if (rc == 0)
				rc = io_full(fd, v, n, (off_t)rs_off, false);
		}
		close(fd);
		if (rc == -EINVAL && direct) { /* stricter than APB_ALIGN */
			direct = false;
			continue;
		}
		return rc;
	}
}

/* Bytes [lo, hi) of the object, inside extent k, from its file into the
 * reader's iovecs rv (rcnt of them, byte 0 of which is the object's byte
 * lo): the whole blocks around them are read (the parts outside [lo, hi)
 * into a bounce buffer) and checked. kept holds the sums of those blocks
 * when the file's checked header is kept (header_get), else NULL: the
 * header is read, checked and kept. 0, -EBADMSG for a file that fails a
 * check, -ENOENT for no file (evicted meanwhile), another negative errno
 * for a read that failed. scratch has room for rcnt + 2 entries. */
static int read_extent(struct apb_disktier *t, uint64_t k, uint32_t gen,
		       bool fresh, const uint64_t *kept, uint64_t lo,
		       uint64_t hi, const struct iovec *rv, int rcnt,
		       struct iovec *scratch)
{
	uint64_t ks = k * EXTENT;
	uint32_t len = extent_len(t, k);
	uint64_t b0, b1, rs, re;
	size_t head, tail;
	union header_block hb;
	/* head and tail are each under a block: no allocation per read */
	_Alignas(APB_ALIGN) char bounce[2 * BLOCK];
	int n, rc;

	block_span(k, lo, hi, &b0, &b1);
	rs = ks + b0 * BLOCK;
	re = ks + b1 * BLOCK < ks + len ? ks + b1 * BLOCK : ks + len;
	head = (size_t)(lo - rs);
	tail = (size_t)(re - hi);
	n = iov_around(scratch, bounce, head, rv, rcnt, tail);
	{
		struct iovec io[n + 1];

		memcpy(io, scratch, sizeof(*io) * (size_t)n);
		rc = read_file(t, k, fresh, kept ? NULL : hb.bytes,
			       HEADER + (rs - ks), io, n);
	}
	if (rc == 0 && !kept)
		rc = check_header(t, &hb.h, k);
	if (rc == 0) {
		uint64_t sums[BLOCKS_PER_EXTENT];

		block_sums(scratch, n, (size_t)(re - rs), sums);
		if (memcmp(sums, kept ? kept : hb.h.block_sum + b0,
			   sizeof(*sums) * (size_t)(b1 - b0)) != 0)
			rc = -EBADMSG;
	}
	if (rc == 0 && !kept)
		header_put(t, k, gen, &hb.h);
	return rc;
}

/* ---- fetching and writing extents ------------------------------------- */

/* Write extent k's file from its bytes in iov (cnt entries, len bytes),
 * its room reserved: 0 or a negative errno. */
static int write_extent(struct apb_disktier *t, uint64_t k,
			const struct iovec *iov, int cnt, uint32_t len)
{
	union header_block hb;
	struct header *h = &hb.h;
	char tmp[64], name[17];
	struct iovec v[cnt + 1];
	int fd, rc;

	memset(&hb, 0, sizeof(hb));
	memcpy(h->magic, MAGIC, sizeof(h->magic));
	h->version = VERSION;
	h->header_len = HEADER;
	h->key_lo = t->key.low64;
	h->key_hi = t->key.high64;
	h->index = k;
	h->extent_size = EXTENT;
	h->len = len;
	h->block_size = BLOCK;
	h->nblocks = (len + BLOCK - 1) / BLOCK;
	block_sums(iov, cnt, len, h->block_sum);
	h->header_sum = XXH3_64bits(h, offsetof(struct header, header_sum));

	snprintf(tmp, sizeof(tmp), ".tmp-%ld-%" PRIuFAST64, (long)getpid(),
		 atomic_fetch_add(&t->tmp_seq, 1));
	extent_name(k, name);
	fd = openat(t->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
		    0600);
	if (fd < 0)
		return -errno;
	v[0] = (struct iovec){hb.bytes, HEADER};
	memcpy(v + 1, iov, sizeof(*iov) * (size_t)cnt);
	rc = io_full(fd, v, cnt + 1, 0, true);
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && renameat(t->dirfd, tmp, t->dirfd, name) != 0)
		rc = -errno;
	if (rc)
		unlinkat(t->dirfd, tmp, 0);
	return rc;
}

/* This object's directory, made on the first write. mu held. */
static int ensure_dir(struct apb_disktier *t)
{
	apb_assert_held(&t->mu);
	if (t->dirfd >= 0)
		return 0;
	if (mkdirat(t->rootfd, t->dirname, 0700) != 0 && errno != EEXIST)
		return -errno;
	t->dirfd = openat(t->rootfd, t->dirname,
			  O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return t->dirfd >= 0 ? 0 : -errno;
}

/* Extents [k0, k1) are LOADING, claimed by this call: fetch them whole in
 * one call, the reader's bytes [lo, hi) straight into rv (rcnt entries),
 * the rest into a bounce buffer; write each to disk while the tier
 * writes; then each is PRESENT (written) or EMPTY again. The fetch's
 * result. */
static long load_run(struct apb_disktier *t, apb_disktier_fetch_fn fetch,
		     void *arg, uint64_t k0, uint64_t k1, uint64_t lo,
		     uint64_t hi, const struct iovec *rv, int rcnt,
		     struct iovec *scratch)
{
	uint64_t rs = k0 * EXTENT;
	uint64_t re = k1 * EXTENT < t->size ? k1 * EXTENT : t->size;
	size_t head = (size_t)(lo - rs), tail = (size_t)(re - hi);
	char *bounce = NULL;
	long r;
	int n;

	if (head + tail > 0) {
		bounce = malloc(head + tail);
		if (!bounce) {
			r = -ENOMEM;
			goto out;
		}
	}
	n = iov_around(scratch, bounce, head, rv, rcnt, tail);
	r = fetch(arg, scratch, n, rs);
	if (r < 0)
		goto out;
	for (uint64_t k = k0; k < k1; k++) {
		struct extent *e = &t->ext[k];
		uint32_t len = extent_len(t, k);
		uint32_t bytes = file_bytes(len);
		struct iovec piece[n];
		int m = iov_slice(scratch, n, (size_t)(k * EXTENT - rs), len,
				  piece);
		int rc = 0;
		bool room;

		apb_mutex_lock(&t->mu);
		room = t->writing && (rc = ensure_dir(t)) == 0 &&
		       reserve(t, bytes);
		if (rc)
			write_failed(t, rc);
		apb_mutex_unlock(&t->mu);
		if (room)
			rc = write_extent(t, k, piece, m, len);
		apb_mutex_lock(&t->mu);
		t->st.misses++;
		if (room && rc == 0) {
			set_present(t, e, bytes);
			t->st.bytes_written += bytes;
		} else {
			if (room) {
				t->used -= bytes;
				t->files--;
				write_failed(t, rc);
			}
			e->state = EXT_EMPTY;
		}
		apb_mutex_unlock(&t->mu);
	}
out:
	apb_mutex_lock(&t->mu);
	if (r < 0)
		for (uint64_t k = k0; k < k1; k++)
			t->ext[k].state = EXT_EMPTY;
	pthread_cond_broadcast(&t->cv);
	apb_mutex_unlock(&t->mu);
	free(bounce);
	return r;
}

long apb_disktier_preadv(struct apb_disktier *t, apb_disktier_fetch_fn fetch,
			 void *fetch_arg, uint64_t pos, const struct iovec *iov,
			 int iovcnt)
{
	struct iovec small[2 * (SMALL_IOV + 2)];
	struct iovec *rv = small, *scratch;
	uint64_t kept[BLOCKS_PER_EXTENT];
	uint64_t end, k = pos / EXTENT;
	size_t want = 0;
	long rc;

	for (int i = 0; i < iovcnt; i++)
		want += iov[i].iov_len;
	end = pos + want;
	rc = (long)want;
	if (want == 0)
		return 0;
	if (pos > t->size || want > t->size - pos)
		return -EINVAL; /* as the remote answers it */
	if (iovcnt > SMALL_IOV) {
		rv = malloc(sizeof(*rv) * 2 * ((size_t)iovcnt + 2));
		if (!rv)
			return -ENOMEM;
	}
	scratch = rv + iovcnt + 2;
	while (k * EXTENT < end) {
		struct extent *e = &t->ext[k];
		uint64_t lo = k * EXTENT > pos ? k * EXTENT : pos;
		uint64_t hi = (k + 1) * EXTENT < end ? (k + 1) * EXTENT : end;
		uint64_t k1, b0, b1;
		uint32_t gen;
		size_t need;
		bool fresh, claim, cached;
		int rcnt, r;

		block_span(k, lo, hi, &b0, &b1);
		apb_mutex_lock(&t->mu);
		while (e->state == EXT_LOADING)
			apb_cond_wait(&t->cv, &t->mu);
		if (e->state == EXT_PRESENT) {
			hold(t, e);
			gen = e->gen;
			fresh = e->fresh;
			cached = header_get(t, k, gen, b0, b1, kept);
			apb_mutex_unlock(&t->mu);
			rcnt = iov_slice(iov, iovcnt, (size_t)(lo - pos),
					 (size_t)(hi - lo), rv);
			r = read_extent(t, k, gen, fresh, cached ? kept : NULL,
					lo, hi, rv, rcnt, scratch);
			apb_mutex_lock(&t->mu);
			if (r == 0) {
				t->st.hits++;
				t->st.bytes_read += hi - lo;
				unhold(t, e);
				apb_mutex_unlock(&t->mu);
				k++;
				continue;
			}
			if (r == -ENOMEM) { /* the file may be fine */
				unhold(t, e);
				apb_mutex_unlock(&t->mu);
				rc = r;
				break;
			}
			if (r == -ENOENT) /* evicted by another mount */
				drop(t, e, gen);
			else
				drop_bad(t, e, gen, r);
			unhold(t, e);
			apb_mutex_unlock(&t->mu);
			continue; /* EMPTY, or loaded by another meanwhile */
		}
		/* EMPTY: this run of missing extents */
		k1 = k;
		while (k1 * EXTENT < end && k1 - k < RUN_MAX &&
		       t->ext[k1].state == EXT_EMPTY)
			k1++;
		hi = k1 * EXTENT < end ? k1 * EXTENT : end;
		/* the bytes of the run outside the reader's range */
		need = (size_t)(lo - k * EXTENT) +
		       (size_t)((k1 * EXTENT < t->size ? k1 * EXTENT : t->size) -
				hi);
		claim = t->writing && t->bounce + need <= BOUNCE_MAX;
		if (claim) {
			for (uint64_t j = k; j < k1; j++)
				t->ext[j].state = EXT_LOADING;
			t->bounce += need;
		} else {
			t->st.misses += k1 - k;
		}
		apb_mutex_unlock(&t->mu);
		rcnt = iov_slice(iov, iovcnt, (size_t)(lo - pos),
				 (size_t)(hi - lo), rv);
		if (claim) {
			rc = load_run(t, fetch, fetch_arg, k, k1, lo, hi, rv,
				      rcnt, scratch);
			apb_mutex_lock(&t->mu);
			t->bounce -= need;
			apb_mutex_unlock(&t->mu);
		} else {
			/* not written (the tier stopped writing, or the fetches
			 * in flight hold BOUNCE_MAX already): straight from the
			 * server into the reader's buffers */
			rc = fetch(fetch_arg, rv, rcnt, lo);
		}
		if (rc < 0)
			break;
		rc = (long)want;
		k = k1;
	}
	if (rv != small)
		free(rv);
	return rc;
}

/* ---- open: index the directory ---------------------------------------- */

struct found {
	struct extent *e;
	struct timespec mtime;
};

struct scan {
	struct found *v;
	size_t n, cap;
};

static int scan_push(struct scan *s, struct extent *e, struct timespec mt)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		struct found *v = realloc(s->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = (struct found){e, mt};
	return 0;
}

static int by_mtime(const void *a, const void *b)
{
	const struct found *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	return x->e->index < y->e->index ? -1 : x->e->index > y->e->index;
}

/* A temporary file of a process that no longer exists: a write that
 * crashed. One of a live process (another mount writing) stays. */
static bool stale_tmp(const char *name)
{
	long pid;
	char *end;

	if (strncmp(name, ".tmp-", 5) != 0)
		return false;
	pid = strtol(name + 5, &end, 10);
	if (end == name + 5 || *end != '-' || pid <= 0)
		return false;
	return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Delete the directory name (an older version of this URL). */
static void remove_dir(int rootfd, const char *name)
{
	int fd = openat(rootfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(fd, de->d_name, 0);
	closedir(d);
	unlinkat(rootfd, name, AT_REMOVEDIR);
}

/* Index the files of directory name: this object's (fdir 0) or another's
 * (fdir > 0, its index + 1 in t->fdirs). Files of this object of the
 * wrong size are dropped and counted. */
static int scan_dir(struct apb_disktier *t, const char *name, uint32_t fdir,
		    struct scan *s, size_t *foreign_cap)
{
	int fd = openat(t->rootfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;
	int rc = 0;

	if (fd < 0)
		return 0; /* gone meanwhile, or unreadable: nothing to index */
	if (fdir == 0) {
		t->dirfd = dup(fd);
		if (t->dirfd < 0) {
			close(fd);
			return -errno;
		}
	}
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	while (rc == 0 && (de = readdir(d))) {
		struct stat sb;
		uint64_t k;
		struct extent *e;

		if (stale_tmp(de->d_name)) {
			unlinkat(fd, de->d_name, 0);
			continue;
		}
		if (strlen(de->d_name) != 16 || !parse_hex16(de->d_name, &k) ||
		    fstatat(fd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(sb.st_mode))
			continue;
		if (fdir == 0) {
			if (k >= t->nextents || t->ext[k].state != EXT_EMPTY ||
			    (uint64_t)sb.st_size != HEADER + extent_len(t, k)) {
				unlinkat(fd, de->d_name, 0);
				t->st.errors++;
				if (t->bad_logged++ < LOG_BAD_MAX)
					tier_log(t, APB_LOG_WARN,
						 "disk tier %s: extent file "
						 "%s/%s is torn (%lld bytes); "
						 "dropped", t->dir, name,
						 de->d_name,
						 (long long)sb.st_size);
				continue;
			}
			e = &t->ext[k];
			e->bytes = file_bytes(extent_len(t, k));
		} else {
			if (t->nforeign == *foreign_cap) {
				size_t cap = *foreign_cap ? 2 * *foreign_cap
							  : 256;
				struct extent *v;

				/* s points into t->foreign: rebase after */
				v = realloc(t->foreign, cap * sizeof(*v));
				if (!v) {
					rc = -ENOMEM;
					break;
				}
				for (size_t i = 0; i < s->n; i++)
					if (s->v[i].e->dir != 0)
						s->v[i].e = v + (s->v[i].e -
								 t->foreign);
				t->foreign = v;
				*foreign_cap = cap;
			}
			e = &t->foreign[t->nforeign++];
			memset(e, 0, sizeof(*e));
			e->index = k;
			e->dir = fdir;
			e->bytes = (uint32_t)((sb.st_size + 4095) / 4096 * 4096);
			t->fdirs[fdir - 1].files++;
		}
		e->state = EXT_PRESENT;
		rc = scan_push(s, e, sb.st_mtim);
	}
	closedir(d);
	return rc;
}

/* Index cache_dir into s: this object's files, other objects' (whose
 * directories go into t->fdirs), deleting older versions of this URL. */
static int scan(struct apb_disktier *t, uint64_t url_hash, struct scan *s)
{
	int fd = dup(t->rootfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	size_t foreign_cap = 0, fdir_cap = 0;
	uint32_t stale = 0;
	int rc = 0;

	if (!d) {
		rc = fd >= 0 ? -ENOMEM : -errno;
		if (fd >= 0)
			close(fd);
		return rc;
	}
	while (rc == 0 && (de = readdir(d))) {
		uint64_t u, v;

		if (strlen(de->d_name) != DIRNAME_LEN - 1 ||
		    de->d_name[16] != '-' || !parse_hex16(de->d_name, &u) ||
		    !parse_hex16(de->d_name + 17, &v))
			continue;
		if (strcmp(de->d_name, t->dirname) == 0) {
			rc = scan_dir(t, de->d_name, 0, s, &foreign_cap);
			continue;
		}
		if (u == url_hash) {
			remove_dir(t->rootfd, de->d_name);
			stale++;
			continue;
		}
		if (t->nfdirs == fdir_cap) {
			size_t cap = fdir_cap ? 2 * fdir_cap : 16;
			struct foreign_dir *fv =
				realloc(t->fdirs, cap * sizeof(*fv));

			if (!fv) {
				rc = -ENOMEM;
				break;
			}
			t->fdirs = fv;
			fdir_cap = cap;
		}
		memset(&t->fdirs[t->nfdirs], 0, sizeof(*t->fdirs));
		memcpy(t->fdirs[t->nfdirs].name, de->d_name, DIRNAME_LEN);
		t->nfdirs++;
		rc = scan_dir(t, de->d_name, t->nfdirs, s, &foreign_cap);
	}
	closedir(d);
	if (stale)
		tier_log(t, APB_LOG_WARN,
			 "disk tier %s: deleted the extents of %u older "
			 "version(s) of this URL", t->dir, stale);
	return rc;
}

/* The set, with the files found entering it oldest first; then evict down
 * to the capacity (a smaller cache_dir_size than last time). */
static int build_set(struct apb_disktier *t, enum apb_eviction policy,
		     struct scan *s)
{
	int rc;

	rc = apb_evict_new(policy, t->slots, &t->set);
	if (rc)
		return rc;
	if (s->n) /* an empty scan has no array, and qsort's may not be NULL */
		qsort(s->v, s->n, sizeof(*s->v), by_mtime);
	apb_mutex_lock(&t->mu);
	for (size_t i = 0; i < s->n; i++) {
		struct extent *e = s->v[i].e;

		e->state = EXT_EMPTY;
		if (!reserve(t, e->bytes))
			continue; /* larger than the capacity: left alone */
		e->state = EXT_PRESENT;
		apb_evict_node_init(t->set, &e->node, e->dir, e->index);
		apb_evict_touch(t->set, &e->node);
		apb_evict_insert(t->set, &e->node);
	}
	apb_mutex_unlock(&t->mu);
	return 0;
}

static XXH64_hash_t hash_parts(const char *const *parts, size_t n,
			       uint64_t size, XXH128_hash_t *whole)
{
	XXH3_state_t st;
	XXH64_hash_t h;

	XXH3_64bits_reset(&st);
	for (size_t i = 0; i < n; i++)
		XXH3_64bits_update(&st, parts[i], strlen(parts[i]) + 1);
	XXH3_64bits_update(&st, &size, sizeof(size));
	h = XXH3_64bits_digest(&st);
	if (whole) {
		XXH3_128bits_reset(&st);
		for (size_t i = 0; i < n; i++)
			XXH3_128bits_update(&st, parts[i],
					    strlen(parts[i]) + 1);
		XXH3_128bits_update(&st, &size, sizeof(size));
		*whole = XXH3_128bits_digest(&st);
	}
	return h;
}

int apb_disktier_open(const struct apb_disktier_config *cfg,
		      struct apb_disktier **out, char *err, size_t err_len)
{
	struct apb_disktier *t;
	struct scan s = {0};
	char url[4096];
	uint64_t u, v;
	int rc;

	*out = NULL;
	if (cfg->capacity < HEADER + EXTENT)
		return apb_fail(-EINVAL, err, err_len, "cache_dir_size is "
				"below one extent (%u bytes)", HEADER + EXTENT);
	if (apb_disktier_url_key(cfg->url, url, sizeof(url)) != 0)
		return apb_fail(-ENAMETOOLONG, err, err_len, "URL too long "
				"for the disk tier");
	t = calloc(1, sizeof(*t));
	if (!t)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	t->rootfd = t->dirfd = -1;
	t->size = cfg->size;
	t->capacity = cfg->capacity;
	t->slots = cfg->capacity / file_bytes(EXTENT) < UINT32_MAX
			   ? (uint32_t)(cfg->capacity / file_bytes(EXTENT))
			   : UINT32_MAX;
	t->st.capacity = cfg->capacity;
	t->writing = true;
	atomic_init(&t->direct, true);
	t->log = cfg->log;
	t->log_arg = cfg->log_arg;
	if (apb_mutex_init(&t->mu) != 0) {
		free(t);
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	}
	pthread_cond_init(&t->cv, NULL);
	{
		const char *up[] = {url};
		const char *vp[] = {url, cfg->identity};
		char uhex[17];

		u = hash_parts(up, 1, 0, NULL);
		snprintf(uhex, sizeof(uhex), "%016" PRIx64, u);
		const char *vp2[] = {uhex, cfg->identity};
		v = hash_parts(vp2, 2, cfg->size, NULL);
		hash_parts(vp, 2, cfg->size, &t->key);
	}
	snprintf(t->dirname, sizeof(t->dirname), "%016" PRIx64 "-%016" PRIx64,
		 u, v);
	t->dir = strdup(cfg->dir);
	t->nextents = (cfg->size + EXTENT - 1) / EXTENT;
	t->ext = calloc(t->nextents ? t->nextents : 1, sizeof(*t->ext));
	if (!t->dir || !t->ext) {
		rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
		goto fail;
	}
	for (uint64_t k = 0; k < t->nextents; k++)
		t->ext[k].index = k;
	t->rootfd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (t->rootfd < 0) {
		rc = apb_fail(-errno, err, err_len, "cache_dir=%s: %s",
			      cfg->dir, strerror(errno));
		goto fail;
	}
	rc = scan(t, u, &s);
	if (rc == 0)
		rc = build_set(t, cfg->policy, &s);
	if (rc) {
		apb_fail(rc, err, err_len, "cache_dir=%s: cannot index it: %s",
			 cfg->dir, strerror(-rc));
		goto fail;
	}
	free(s.v);
	*out = t;
	return 0;
fail:
	free(s.v);
	apb_disktier_close(t);
	return rc;
}

void apb_disktier_close(struct apb_disktier *t)
{
	if (!t)
		return;
	if (t->rootfd >= 0)
		close(t->rootfd);
	if (t->dirfd >= 0)
		close(t->dirfd);
	apb_evict_free(t->set);
	pthread_cond_destroy(&t->cv);
	apb_mutex_destroy(&t->mu);
	free(t->ext);
	free(t->foreign);
	free(t->fdirs);
	free(t->dir);
	free(t);
}

void apb_disktier_stats(struct apb_disktier *t,
			struct apb_bundle_disk_tier_stats *st)
{
	apb_mutex_lock(&t->mu);
	*st = t->st;
	st->bytes_used = t->used;
	st->capacity = t->capacity;
	st->writing = t->writing;
	apb_mutex_unlock(&t->mu);
}
