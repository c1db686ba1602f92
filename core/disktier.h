/*
 * disktier.h - the disk tier (-o cache_dir=, cache_dir_size=): bytes of an
 * object behind a URL kept in files under a local directory, so a later
 * read, of this mount or of a later one, comes from the disk instead of
 * the server. Internal to libapbundle; not installed.
 *
 * source.c puts it in front of the remote's reads (the only user): a read
 * is split into aligned extents of APB_DISKTIER_EXTENT bytes; extents on
 * disk are read and verified, missing ones are fetched through the fetch
 * callback (adjacent ones in one call) and written to disk. The layout of
 * the directory, the checks, the bound and the locking are described at
 * the top of disktier.c and in docs/DESIGN.md ("The disk tier").
 *
 * A read never fails because of the tier: a file that fails its check is
 * dropped and its bytes fetched again, and a directory that cannot be
 * written (full, read-only) only stops the tier writing. The errors a read
 * returns are the fetch callback's.
 */
#ifndef APB_CORE_DISKTIER_H
#define APB_CORE_DISKTIER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "apbundle/bundle.h"
#include "apbundle/cache.h"

#define APB_DISKTIER_EXTENT (1u << 20)   /* bytes of the object per file */
#define APB_DISKTIER_BLOCK 4096u         /* bytes per stored checksum */
#define APB_DISKTIER_HEADER 4096u        /* a file's header, payload after */

struct apb_disktier;

struct apb_disktier_config {
	const char *dir;        /* cache_dir: an existing directory */
	uint64_t capacity;      /* cache_dir_size: bytes of extent files, at
				 * least APB_DISKTIER_EXTENT + HEADER */
	enum apb_eviction policy;
	/* What names the object: the URL requests go to
	 * (apb_remote_url(): an s3:// URL's names its endpoint; credentials
	 * in it are left out of the key), its identity
	 * (apb_remote_identity()) and size. */
	const char *url;
	const char *identity;
	uint64_t size;
	/* Where the tier's lines go (at most a few per mount); NULL:
	 * stderr. */
	void (*log)(void *arg, enum apb_log_level level, const char *msg);
	void *log_arg;
};

/* Open the tier for one object: index what cache_dir holds (this object's
 * extents, other objects' for the bound), delete the extents of older
 * versions of the same URL, and evict down to the capacity. 0, or a
 * negative errno with one line in err (-ENOTDIR, -ENOENT, -EACCES for the
 * directory, -EINVAL for a capacity below one extent, -ENOMEM). */
int apb_disktier_open(const struct apb_disktier_config *cfg,
		      struct apb_disktier **out, char *err, size_t err_len);
/* No read may be running. NULL is fine. */
void apb_disktier_close(struct apb_disktier *t);

/* Read exactly len bytes at off of the object into iov (the fetch
 * callback's contract is apb_remote_preadv()'s): the total or a negative
 * errno. */
typedef ssize_t (*apb_disktier_fetch_fn)(void *arg, const struct iovec *iov,
					 int iovcnt, uint64_t off);

/* The bytes at pos of the object into iov (apb_remote_preadv()'s
 * contract), from the disk where the tier holds them and through fetch
 * where it does not: their total, or the fetch's negative errno.
 * Thread-safe. */
long apb_disktier_preadv(struct apb_disktier *t, apb_disktier_fetch_fn fetch,
			 void *fetch_arg, uint64_t pos, const struct iovec *iov,
			 int iovcnt);

void apb_disktier_stats(struct apb_disktier *t,
			struct apb_bundle_disk_tier_stats *st);

/* The URL with any user:password@ left out, into out: the part of the key
 * that names the object. 0, or -ENAMETOOLONG. For the unit test too. */
int apb_disktier_url_key(const char *url, char *out, size_t out_len);

#endif
