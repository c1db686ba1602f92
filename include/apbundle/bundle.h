/*
 * bundle.h - open, validate and read an .apbundle file.
 *
 * apb_bundle_open() reads the header and manifest, validates every rule of
 * docs/FORMAT.md (the versions and aprender's layout) and only then returns a
 * bundle. Nothing about a bundle is trusted before that: offsets, sizes,
 * counts and names are all checked, with overflow-safe arithmetic, against
 * the file.
 *
 * Models are exposed sorted by name; a model's index in that order is its
 * identity everywhere else in the library (cache keys, tree, stats).
 *
 * Thread safety: after open, a bundle is immutable; every function below may
 * be called from any number of threads at once (reads use pread()).
 */
#ifndef APBUNDLE_BUNDLE_H
#define APBUNDLE_BUNDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "api.h"
#include "cache.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_MAGIC "APBUNDLE"
#define APB_MAGIC_LEN 8
#define APB_ALIGN 4096u                    /* v1 model offsets are multiples */
#define APB_MANIFEST_MAX (256u << 20)      /* cap on manifest bytes */
#define APB_MODELS_MAX (1u << 20)          /* cap on model_count */
#define APB_BLOCK_SIZE_MIN 4096u           /* v2 block_size bounds */
#define APB_BLOCK_SIZE_MAX (16u << 20)
#define APB_BLOCKS_MAX (1u << 24)          /* cap on v2 block table entries */

/* The on-disk layouts this library understands. */
enum apb_layout {
	APB_LAYOUT_V1 = 1,       /* version 1: JSON manifest */
	APB_LAYOUT_V2 = 2,       /* version 2: checksummed blocks, zstd */
	APB_LAYOUT_APRENDER = 1001, /* aprender's binary manifest, u64 length */
};

/* How a version 2 model's blocks may be stored. */
enum apb_compression {
	APB_COMPRESSION_NONE = 0, /* every block raw, back to back */
	APB_COMPRESSION_ZSTD = 1, /* each block a zstd frame, or raw if it
				   * did not shrink */
};

/* One model, as validated. All pointers are owned by the bundle and live
 * until apb_bundle_close(). */
struct apb_model {
	const char *name;     /* relative path, '/'-separated, validated */
	uint64_t size;        /* uncompressed bytes */
	uint64_t offset;      /* absolute file offset of the stored bytes */
	uint64_t stored_size; /* bytes occupied in the file */
	uint64_t xxh3;        /* XXH3-64 of the model bytes, if has_checksum */
	bool has_checksum;    /* false for the aprender layout */
	/* Version 2 only; zero (NONE, 0, 0, 0) for the other layouts. */
	enum apb_compression compression;
	uint64_t block_size;  /* uncompressed bytes per block but the last */
	uint64_t block_count; /* ceil(size / block_size) */
	uint64_t first_block; /* its first entry in the bundle's block table */
};

struct apb_bundle;

/*
 * Open and validate PATH: a local file, or a URL (apb_bundle_is_url()) read
 * with the default settings (apb_bundle_open_ex()). On success *out owns an
 * open file descriptor (or the URL's connections) and the manifest. On
 * failure returns a negative errno (-EINVAL for a malformed bundle, the
 * open()/read() errno otherwise; for a URL -ENOENT for HTTP 404, -EACCES
 * for 401/403, -EIO for the rest) and writes one line describing exactly
 * what is wrong into err (no trailing newline, no path or URL prefix).
 */
APB_API
int apb_bundle_open(const char *path, struct apb_bundle **out, char *err,
		    size_t err_len);
APB_API
void apb_bundle_close(struct apb_bundle *b);

/* Whether apb_bundle_open() reads s over the network: it begins with
 * http://, https:// or s3:// (the scheme in any case). A local file whose
 * path begins so is written ./http:... */
APB_API
bool apb_bundle_is_url(const char *s);

/* where as it may be shown (the mount table, logs, messages): a URL's
 * password (scheme://USER:PASSWORD@HOST/...) and the value of each
 * parameter of its query (a presigned URL's signature) replaced by "***",
 * anything else as it is. A new string to free(), or NULL without memory. */
APB_API
char *apb_bundle_redact(const char *where);

/* How S3 requests name the object. */
enum apb_s3_style {
	APB_S3_STYLE_AUTO = 0, /* path-style when an endpoint is set, else virtual-hosted */
	APB_S3_STYLE_PATH,     /* ENDPOINT/BUCKET/KEY (Ceph RGW, MinIO) */
	APB_S3_STYLE_VIRTUAL,  /* https://BUCKET.ENDPOINT-HOST/KEY (AWS) */
};

enum apb_log_level {
	APB_LOG_ERROR = 0, /* a read failed: the one line about it */
	APB_LOG_WARN,      /* worth knowing once (a server that ignores Range) */
	APB_LOG_RETRY,     /* a transient failure about to be retried */
};

/* Settings for a bundle behind a URL; every field may be zero (NULL) and
 * none matters for a local file. The S3 ones override the environment and
 * the AWS profile files (docs/USAGE.md, "Remote bundles"). */
struct apb_bundle_options {
	const char *s3_endpoint; /* e.g. http://127.0.0.1:7480 */
	const char *s3_region;
	const char *s3_profile;
	enum apb_s3_style s3_style;
	/* The disk tier (docs/USAGE.md, "The disk tier"): bytes fetched are
	 * kept in files under cache_dir, at most cache_dir_size bytes of
	 * them, evicted under cache_dir_eviction. NULL: no tier. */
	const char *cache_dir;
	uint64_t cache_dir_size;
	enum apb_eviction cache_dir_eviction;
	/* Where messages about failed reads go (the error a read returns is
	 * EIO or EACCES; the line says why); NULL: stderr, retries not shown.
	 * Called from the reading thread, with no lock of the bundle held. */
	void (*log)(void *arg, enum apb_log_level level, const char *msg);
	void *log_arg;
};

/*
 * As apb_bundle_open(), with settings o (NULL: the defaults). A bundle read
 * from a URL costs one request at open when its header, manifest and block
 * table lie in the object's first 64 KiB (one more otherwise); every read
 * is then a ranged GET carrying the object's ETag, so a changed object
 * fails reads with -EIO (and a log line) and never returns bytes of two
 * versions. apb_bundle_direct_io() does not apply (-EINVAL) and
 * apb_bundle_stat() is synthesized (see there).
 */
APB_API
int apb_bundle_open_ex(const char *path_or_url,
		       const struct apb_bundle_options *o,
		       struct apb_bundle **out, char *err, size_t err_len);

/* What a bundle read from a URL has cost so far. */
struct apb_bundle_remote_stats {
	uint64_t requests; /* HTTP requests, the open's and retries included */
	uint64_t retries;  /* of them, repeats after a transient failure */
	uint64_t connects; /* TCP connections made */
	uint64_t bytes;    /* bytes read after the open's first request */
	uint64_t errors;   /* reads that failed */
	bool changed;      /* a read found the object changed or gone: every
			    * read fails with -EIO from then on */
};

/* 0 and *st for a bundle read from a URL; -ENOENT for a local file. */
APB_API
int apb_bundle_remote_stats(const struct apb_bundle *b,
			    struct apb_bundle_remote_stats *st);

/* What the disk tier (cache_dir=) of a bundle read from a URL did; its
 * extents are 1 MiB of the object. */
struct apb_bundle_disk_tier_stats {
	uint64_t hits;          /* extent reads served from disk */
	uint64_t misses;        /* extents fetched from the server */
	uint64_t bytes_read;    /* bytes read from disk for readers */
	uint64_t bytes_written; /* bytes of extent files written */
	uint64_t evictions;     /* extent files deleted for room */
	uint64_t errors;        /* files that failed their check, and writes
				 * that failed */
	uint64_t bytes_used;    /* extent files' bytes now (this mount's view) */
	uint64_t capacity;      /* cache_dir_size */
	bool writing;           /* false once a write failed: no more writes */
};

/* 0 and *st for a bundle with a disk tier; -ENOENT without one. */
APB_API
int apb_bundle_disk_tier_stats(const struct apb_bundle *b,
			       struct apb_bundle_disk_tier_stats *st);

APB_API
enum apb_layout apb_bundle_layout(const struct apb_bundle *b);
APB_API
size_t apb_bundle_count(const struct apb_bundle *b);

/* Model number index (0 <= index < count), in name order. */
APB_API
const struct apb_model *apb_bundle_model(const struct apb_bundle *b,
					 size_t index);

/* Binary search by exact name. Returns 0 and sets *index, or -ENOENT. */
APB_API
int apb_bundle_find(const struct apb_bundle *b, const char *name,
		    size_t *index);

/*
 * Read up to len bytes of model index starting at byte off of the model's
 * uncompressed data. Returns the number of bytes read (short only at the end
 * of the model, 0 at or past it) or a negative errno; a backing file that is
 * shorter than the manifest promised gives -EIO; a version 2 block that
 * fails its checksum twice gives -EBADMSG (see apb_bundle_preadv()).
 */
APB_API
long apb_bundle_read(const struct apb_bundle *b, size_t index, uint64_t off,
		     void *buf, size_t len);

/*
 * As apb_bundle_read(), scattering the bytes into iov[0 .. iovcnt) in order
 * (preadv(), so a run of the caller's buffers adjacent in the file is one
 * read where the kernel allows; for the daemon they are cache chunks).
 * The length read is the sum of the iov_len, clipped at the end of the
 * model; the buffers past that are left untouched. Returns the
 * bytes read, -EINVAL for a bad index or a negative iovcnt, -EIO if the file
 * ends before the manifest said, or the preadv() errno.
 *
 * For version 2 every block the read touches is read whole, decompressed
 * when it is a zstd frame, and checked against its XXH3 before any of its
 * bytes count as read; whole raw blocks go straight into iov, the rest
 * through a scratch buffer. A block that fails (a wrong checksum, or a
 * frame that does not decode to exactly the block's length) is read once
 * more; failing again, the call returns -EBADMSG and, when bad_block is not
 * NULL, stores the block's index within the model there. Bytes of iov up
 * to that block may have been written. Other layouts have no per-block
 * checksums.
 */
APB_API
long apb_bundle_preadv(const struct apb_bundle *b, size_t index, uint64_t off,
		       const struct iovec *iov, int iovcnt,
		       uint64_t *bad_block);

/*
 * Read stored bytes with O_DIRECT wherever a request allows it: file
 * offset, every buffer and every length multiples of APB_ALIGN (the cache's
 * chunk slots are); anything else stays buffered. A caller that keeps its
 * own cache of the bytes gains nothing from a second copy in the kernel's
 * page cache and pays CPU time for copying out of it (docs/DESIGN.md).
 * Call before the bundle is shared between threads. Returns 0, or the
 * errno of reopening the file with O_DIRECT (-EINVAL where the filesystem
 * does not support it, such as tmpfs); reads then stay buffered.
 */
APB_API
int apb_bundle_direct_io(struct apb_bundle *b);

/* stat() of the bundle file taken at open time (times, owner, size). For
 * a URL: a regular file of mode 0444 and the object's size, its times
 * those of the open; device and inode 0. */
APB_API
const struct stat *apb_bundle_stat(const struct apb_bundle *b);

#ifdef __cplusplus
}
#endif

#endif
