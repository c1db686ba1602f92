/*
 * remote.h - read byte ranges of one object behind an http://, https:// or
 * s3://bucket/key URL (libcurl). Internal to the library and the tools;
 * not installed. The design, the locking and the memory bounds are
 * described at the top of remote.c.
 *
 * Every function returns 0 (or a length) on success and a negative errno
 * on failure. The errors a read can end with:
 *   -ESTALE  the object changed since apb_remote_open() (HTTP 412 to the
 *            If-Match the read carried, or a different ETag, size or
 *            Last-Modified in the answer); no byte of the other version is
 *            returned as read. The object must be opened again.
 *   -EACCES  HTTP 401/403: bad or missing credentials.
 *   -ENOENT  HTTP 404: the object (or bucket) is gone.
 *   -EINVAL  a range outside [0, size) asked for by the caller.
 *   -EIO     everything else, after the retries for transient failures
 *            (timeouts, refused or reset connections, truncated bodies,
 *            HTTP 5xx/429/408) were spent; HTTP 416 names the range.
 * The message for a failed read goes to the options' log callback (level
 * APB_REMOTE_LOG_ERROR); apb_remote_open() also writes it into err.
 */
#ifndef APB_CORE_REMOTE_H
#define APB_CORE_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct apb_remote;

enum apb_remote_style {
	APB_REMOTE_STYLE_AUTO = 0, /* path-style when an endpoint is given, else virtual-hosted */
	APB_REMOTE_STYLE_PATH,     /* ENDPOINT/bucket/key (self-hosted stores: Ceph, MinIO) */
	APB_REMOTE_STYLE_VIRTUAL,  /* https://bucket.ENDPOINT-HOST/key (AWS) */
};

enum apb_remote_log_level {
	APB_REMOTE_LOG_ERROR = 0, /* a read or an open failed: the one line to show */
	APB_REMOTE_LOG_WARN,      /* worth knowing once (a server that ignores Range) */
	APB_REMOTE_LOG_RETRY,     /* a transient failure about to be retried */
};

/* All fields may be left zero (NULL) for the default named. */
struct apb_remote_options {
	/* S3 only: each overrides the environment and the profile files. */
	const char *s3_endpoint; /* else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, profile endpoint_url, AWS */
	const char *s3_region;   /* else AWS_REGION, AWS_DEFAULT_REGION, profile region, "us-east-1" */
	const char *s3_profile;  /* else AWS_PROFILE, "default" */
	enum apb_remote_style s3_style;

	unsigned pool_size;         /* curl handles, hence connections, at most: 8 */
	unsigned max_retries;       /* attempts after the first for a transient failure: 5 */
	unsigned retry_total_ms;    /* no retry starts later than this after the first attempt: 30000 */
	unsigned retry_base_ms;     /* first backoff; doubles, full jitter, capped at 5 s: 100 */
	unsigned connect_timeout_ms;/* TCP + TLS connect: 10000 */
	unsigned stall_timeout_ms;  /* a transfer receiving nothing this long is a timeout: 30000 */
	size_t max_request_bytes;   /* apb_remote_preadv() splits longer runs: 8 MiB */
	size_t head_bytes;          /* bytes fetched by the open request (apb_remote_head()): 64 KiB, max 1 MiB */
	size_t recv_buffer_bytes;   /* libcurl's receive buffer per handle: 64 KiB */

	/* Where messages go; NULL: stderr, retries not shown. */
	void (*log)(void *arg, enum apb_remote_log_level level, const char *msg);
	void *log_arg;
};

/* Open url: one ranged GET of its first head_bytes, which learns the
 * object's size and identity (ETag, else Last-Modified and size) and keeps
 * the bytes for apb_remote_head(). */
int apb_remote_open(const char *url, const struct apb_remote_options *o, struct apb_remote **out,
		    char *err, size_t err_len);

/* Close; no read may be running. NULL is fine. */
void apb_remote_close(struct apb_remote *r);

uint64_t apb_remote_size(const struct apb_remote *r);

/* The identity every read is checked against: the ETag as the server sent
 * it (quotes included), or "last-modified: DATE" when there was none. */
const char *apb_remote_identity(const struct apb_remote *r);

/* The URL requests go to: an s3:// URL resolved to its endpoint's (path-
 * or virtual-hosted, as the requests), any other as given. */
const char *apb_remote_url(const struct apb_remote *r);

/* The object's first min(head_bytes, size) bytes, fetched at open. */
const void *apb_remote_head(const struct apb_remote *r, size_t *len);

/* Read exactly len bytes at off into buf: len, or a negative errno (see
 * above); buf's content is unspecified after an error. Thread-safe. */
ssize_t apb_remote_pread(struct apb_remote *r, void *buf, size_t len, uint64_t off);

/* Read the run of adjacent ranges [off, off + sum of iov lengths) into the
 * iovecs in order, with one request per max_request_bytes: the total, or a
 * negative errno. Every request of the call carries the same If-Match, so
 * a call that succeeds returned bytes of one version. Thread-safe. */
ssize_t apb_remote_preadv(struct apb_remote *r, const struct iovec *iov, int iovcnt,
			  uint64_t off);

struct apb_remote_stats {
	uint64_t requests;   /* HTTP requests sent, the open's and retries included */
	uint64_t retries;    /* of them, repeats after a transient failure */
	uint64_t connects;   /* TCP connections made (libcurl's count) */
	uint64_t bytes;      /* bytes delivered to callers */
	uint64_t errors;     /* reads that failed */
};

void apb_remote_get_stats(struct apb_remote *r, struct apb_remote_stats *st);

/* ---- exposed for the unit test ---- */

struct apb_remote_url {
	bool s3;
	char bucket[64];  /* s3 only */
	char key[1025];   /* s3 only, as written (not escaped) */
};

/* Classify url: http(s) URLs are left to libcurl; s3://bucket/key is split. */
int apb_remote_parse_url(const char *url, struct apb_remote_url *u, char *err, size_t err_len);

/* The request URL of bucket/key at endpoint ("http://host:port", a path
 * prefix allowed), path-style or virtual-hosted (which falls back to
 * path-style for bucket names that are not DNS labels and for endpoints
 * whose host is an IP address). */
int apb_remote_s3_url(const char *endpoint, const char *bucket, const char *key, bool path_style,
		      char *out, size_t out_len, char *err, size_t err_len);

/* The value of key in [section] of the INI file at path (AWS credentials
 * and config files): 1 and the trimmed value in out; 0 when the section
 * exists without the key; -ENOENT when the file or the section does not
 * exist; -ENAMETOOLONG when the value does not fit out; another negative
 * errno when the file cannot be read. Keys compare case-insensitively;
 * indented lines (nested settings such as "s3 =") are skipped. */
int apb_remote_ini_get(const char *path, const char *section, const char *key, char *out,
		       size_t out_len);

#endif
