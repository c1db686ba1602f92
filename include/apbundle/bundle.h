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
 * Open and validate PATH. On success *out owns an open file descriptor and
 * the manifest. On failure returns a negative errno (-EINVAL for a malformed
 * bundle, the open()/read() errno otherwise) and writes one line describing
 * exactly what is wrong into err (no trailing newline, no path prefix).
 */
int apb_bundle_open(const char *path, struct apb_bundle **out, char *err,
		    size_t err_len);
void apb_bundle_close(struct apb_bundle *b);

enum apb_layout apb_bundle_layout(const struct apb_bundle *b);
size_t apb_bundle_count(const struct apb_bundle *b);

/* Model number index (0 <= index < count), in name order. */
const struct apb_model *apb_bundle_model(const struct apb_bundle *b,
					 size_t index);

/* Binary search by exact name. Returns 0 and sets *index, or -ENOENT. */
int apb_bundle_find(const struct apb_bundle *b, const char *name,
		    size_t *index);

/*
 * Read up to len bytes of model index starting at byte off of the model's
 * uncompressed data. Returns the number of bytes read (short only at the end
 * of the model, 0 at or past it) or a negative errno; a backing file that is
 * shorter than the manifest promised gives -EIO; a version 2 block that
 * fails its checksum twice gives -EBADMSG (see apb_bundle_preadv()).
 */
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
int apb_bundle_direct_io(struct apb_bundle *b);

/* stat() of the bundle file taken at open time (times, owner, size). */
const struct stat *apb_bundle_stat(const struct apb_bundle *b);

#endif
