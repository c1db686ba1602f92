/*
 * source.h - where a bundle's bytes come from: the lowest layer of the
 * reader. The bundle (bundle.c), its manifest parsers (manifest.c,
 * manifest_json.c, aprender.c) and version 2's reads by block (v2.c) read
 * the bundle only through these calls, so nothing above this layer knows
 * whether the bytes come from a local file or from a server.
 *
 * Two kinds, chosen by apb_source_open() from what it is given, and each
 * call below dispatches on the kind (a switch in source.c):
 *
 *   file    a local path: reads are preads on its descriptors (and an
 *           O_DIRECT twin, apb_source_direct_io()); the stat taken at open
 *           is what the daemon's backing checks compare the file with.
 *   remote  an http://, https:// or s3:// URL (apb_bundle_is_url()): reads
 *           are ranged GETs through core/remote.c, each carrying the ETag
 *           seen at open (If-Match), so the object's identity is checked on
 *           every read and a local stat has nothing to add. The head is the
 *           first 64 KiB the open request fetched, and metadata reads that
 *           fall inside it are served from it: a bundle whose header,
 *           manifest and block table lie in its first 64 KiB opens in one
 *           round trip. There is no O_DIRECT (apb_source_direct_io() is
 *           -EINVAL) and the stat is synthesized (a regular file, mode 0444,
 *           the object's size, times of the open). An object that changed or
 *           went away since open (remote.c's -ESTALE, -ENOENT) fails that
 *           read and every later one with -EIO, and
 *           apb_source_remote_stats() says so: no read returns bytes of
 *           two versions.
 *
 * A source never changes after open (apb_source_direct_io() included,
 * which is called before the source is shared; a remote source's changed
 * flag is an atomic), so any number of threads may read one source at once.
 * Internal to libapbundle; not installed.
 */
#ifndef APB_CORE_SOURCE_H
#define APB_CORE_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define APB_HEAD_LEN 20u /* bytes read at open, before any layout is chosen */

struct apb_source;

struct apb_bundle_options;

/* Open where: a URL (apb_bundle_is_url()) as a remote source with o's
 * settings (o may be NULL: the defaults), which costs one request; else
 * the regular file at that path (a FIFO or device is refused without
 * blocking), whose first min(size, APB_HEAD_LEN) bytes are read. 0 or a
 * negative errno with one line in err, which does not name where. */
int apb_source_open(const char *where, const struct apb_bundle_options *o,
		    struct apb_source **out, char *err, size_t err_len);
void apb_source_close(struct apb_source *s);

/* The size at open, and the bytes read at open (*len of them: at least
 * min(size, APB_HEAD_LEN), up to 64 KiB for a remote source). */
uint64_t apb_source_size(const struct apb_source *s);
const uint8_t *apb_source_head(const struct apb_source *s, size_t *len);

/* The file's stat at open (identity, size, mtime): what a caller checks a
 * later stat against to see whether the file changed. A remote source's is
 * synthesized (see the top): nothing to check a path against. */
const struct stat *apb_source_stat(const struct apb_source *s);

/* Whether s is remote, and then its request counters (remote.h) and
 * whether it saw the object change or go away: 0, or -ENOENT for a local
 * file (*st untouched). */
struct apb_bundle_remote_stats;
int apb_source_remote_stats(const struct apb_source *s,
			    struct apb_bundle_remote_stats *st);

/* A remote source's disk tier's counters (disktier.h): 0, or -ENOENT
 * without one (a local file, or no cache_dir). */
struct apb_bundle_disk_tier_stats;
int apb_source_disk_tier_stats(const struct apb_source *s,
			       struct apb_bundle_disk_tier_stats *st);

/* Whether s is remote: every read is a request, whose round trip costs
 * more than the bytes of a few more adjacent blocks, so a reader of many
 * small pieces (v2.c) does better to ask for their run at once. */
bool apb_source_is_remote(const struct apb_source *s);

/* Exactly len bytes at off into buf, through the page cache: 0, -EIO if
 * the source ends first, or the read's negative errno. For metadata
 * (header, manifest, block table). */
int apb_source_pread(const struct apb_source *s, void *buf, size_t len,
		     uint64_t off);

/* Every read of stored model bytes: exactly want bytes at pos into iov,
 * from byte skip of iov[0] on; want or a negative errno (-EIO if the
 * source ends first). The leading iovecs O_DIRECT can take (position,
 * buffer and length multiples of APB_ALIGN) go through the direct
 * descriptor when there is one, the rest through the page cache. */
long apb_source_preadv(const struct apb_source *s, uint64_t pos,
		       const struct iovec *iov, int iovcnt, size_t skip,
		       size_t want);

/* Open a second, O_DIRECT descriptor on the same open file (not its path,
 * which may name another file by now). 0, or a negative errno and the
 * source stays buffered: -EINVAL where the filesystem has no O_DIRECT (and
 * for a remote source: no page cache to bypass), -ESTALE if /proc gave
 * another file. Not thread-safe: call it before the source is shared. */
int apb_source_direct_io(struct apb_source *s);

#endif
