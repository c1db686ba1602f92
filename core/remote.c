/*
 * remote.c - ranged reads of one object over HTTP(S) or S3, with libcurl.
 *
 * REQUESTS
 *
 * apb_remote_open() sends one GET with "Range: bytes=0-(head_bytes-1)":
 * the 206's Content-Range gives the size, its ETag (or Last-Modified) the
 * identity, and its body the first bytes, which a bundle reader needs
 * next anyway (the header), so open costs one round trip, not a HEAD and
 * then a GET. An empty object answers 416 (or a 200 of nothing) and opens
 * with size 0. Every later request is a GET of one range, which carries
 * "If-Match: ETAG" (or "If-Unmodified-Since: DATE" when the server gave
 * no strong ETag: a weak one never matches If-Match) and whose answer is
 * checked before a byte is copied: a 206 must have a Content-Range that
 * covers the range asked for and the size recorded at open, and an ETag, if
 * it has one, equal to the recorded one. 412 or any mismatch is -ESTALE,
 * final, and the call fails as a whole, so no call returns bytes of two
 * versions. A 200 to a range request (a server or proxy that ignores
 * Range) is accepted after the same checks: the body is read from the
 * start, bytes before the range are dropped, and the transfer is cut as
 * soon as the range is complete - correct, but costly far into the object,
 * which is logged once, at open. S3 requests are signed by libcurl's
 * CURLOPT_AWS_SIGV4; curl 7.88 signs a payload hash it does not send, so
 * "x-amz-content-sha256: UNSIGNED-PAYLOAD" is sent (and signed) with every
 * request.
 *
 * RETRIES
 *
 * Timeouts (connect, or no byte for stall_timeout_ms), refused or reset
 * connections, bodies shorter than announced, HTTP 5xx, 429 and 408 are
 * retried after base * 2^(attempt-1) ms (capped at 5 s) with full jitter
 * (a uniform delay in [d/2, d], so that readers that failed together do
 * not come back together), at most max_retries times and never starting
 * later than retry_total_ms after the first attempt; then -EIO and one
 * log line naming the URL, the range, the attempts and the last failure.
 * 4xx answers are final: 401/403 -EACCES, 404 -ENOENT, 412 -ESTALE, 416 and
 * the rest -EIO. A retry rewrites the caller's buffer from the start of
 * its range; the If-Match keeps it to the same version.
 *
 * TLS
 *
 * https:// is verified as libcurl does by default: the server's certificate
 * must chain to a trusted CA and name the host. The trusted CAs are
 * libcurl's default bundle (Debian: the system's), unless the environment
 * names a file of CA certificates: CURL_CA_BUNDLE (curl's own variable),
 * else SSL_CERT_FILE (OpenSSL's). A file named there that cannot be read
 * fails the open of an https URL, naming the variable; a certificate that
 * is not trusted fails it naming the two variables, never retried.
 *
 * CONNECTIONS AND LOCKING
 *
 * A bounded pool of curl easy handles; each keeps its one connection alive
 * (CURLOPT_MAXCONNECTS 1), so at most pool_size connections exist per
 * object. A read takes an idle handle, or makes one if fewer than
 * pool_size exist, or waits for one on pool_cv. r->mu protects only the
 * pool: idle[], nidle, nhandles. It is never held across a transfer, a
 * backoff sleep or curl_easy_init(): the handle is taken under the lock,
 * used without it, and put back under it. Everything else in struct
 * apb_remote is written by apb_remote_open() before the object is shared
 * and only read afterwards (the URL, the identity, the header lists
 * libcurl reads, the head bytes); the counters are atomics. A handle is
 * used by one thread at a time, which is all libcurl asks (with
 * CURLOPT_NOSIGNAL). libcurl itself is loaded, and curl_global_init()
 * run, by the first apb_remote_open() of the process (core/curl_dl.c); r->curl
 * is its function table, which never changes.
 *
 * MEMORY
 *
 * Bytes go from libcurl's receive buffer straight into the caller's buffer
 * in the write callback: no object, range or chunk is copied or held here.
 * What this module holds per object: the head bytes (head_bytes, at most
 * 1 MiB), and per handle libcurl's receive buffer (recv_buffer_bytes,
 * 64 KiB by default) plus its connection and TLS state (tens of KiB), and
 * per running transfer 512 bytes of an error body kept for the message.
 * With the defaults (8 handles) that is under 2 MiB, beside max_memory.
 */
#include "remote.h"

#include <apbundle/bundle.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "curl_dl.h"
#include "error.h"
#include "lock.h"

#define DEF_POOL 8u
#define MAX_POOL 64u
#define DEF_RETRIES 5u
#define DEF_RETRY_TOTAL_MS 30000u
#define DEF_RETRY_BASE_MS 100u
#define RETRY_CAP_MS 5000u
#define DEF_CONNECT_MS 10000u
#define DEF_STALL_MS 30000u
#define DEF_MAX_REQUEST (8u << 20)
#define DEF_HEAD (64u << 10)
#define MAX_HEAD (1u << 20)
#define DEF_RECV_BUF (64u << 10)
#define ERRBODY 512
#define IDENT_MAX 256
#define MSG_MAX 512

struct apb_remote {
	/* set by apb_remote_open(), read-only afterwards */
	const struct apb_curl *curl; /* libcurl's functions (curl_dl.h) */
	char *url;                 /* the request URL */
	char *name;                /* the URL as messages show it: apb_bundle_redact() */
	bool s3_signed;
	char region[64];
	char access_key[128];
	char secret_key[256];
	struct curl_slist *open_hdrs; /* headers of the open request */
	struct curl_slist *read_hdrs; /* ... and of every read: the condition */
	uint64_t size;
	char etag[IDENT_MAX];      /* "" when the server gave none */
	char last_modified[IDENT_MAX];
	char identity[IDENT_MAX + 16];
	unsigned char *head;
	size_t head_len;
	char ca_file[1024];         /* CAINFO from the environment, or "" */
	unsigned pool_size, max_retries, retry_total_ms, retry_base_ms;
	unsigned connect_timeout_ms, stall_timeout_ms;
	size_t max_request, recv_buffer;
	void (*log)(void *arg, enum apb_remote_log_level level, const char *msg);
	void *log_arg;

	struct apb_mutex mu;       /* protects idle, nidle, nhandles */
	pthread_cond_t pool_cv;    /* signalled when a handle goes back to idle */
	CURL **idle;               /* pool_size slots */
	unsigned nidle, nhandles;

	atomic_uint_fast64_t n_requests, n_retries, n_connects, n_bytes, n_errors;
};

/* One transfer: where its bytes go and what its answer said. On the stack
 * of the reading thread; libcurl's callbacks fill it in. */
struct xfer {
	struct apb_remote *r;
	const struct iovec *iov;
	int iovcnt;
	uint64_t want_off, want_len;
	bool learn;            /* the open request: record, do not check, the identity */

	/* from the header callback (reset at every status line: redirects) */
	long status;
	char etag[IDENT_MAX];
	char last_modified[IDENT_MAX];
	bool has_cr, cr_unknown_total;
	uint64_t cr_start, cr_end, cr_total;
	bool has_cl;
	uint64_t content_length;

	/* from the write callback */
	bool started;          /* the first body byte was seen and the answer checked */
	uint64_t pos;          /* object offset of the next body byte */
	uint64_t got;          /* bytes delivered to the iovecs */
	int seg;               /* current iovec and the offset in it */
	size_t seg_off;
	bool done;             /* the range is complete; the transfer was cut on purpose */
	int fail;              /* a final error found while checking (-ESTALE, -EIO) */
	char fail_msg[MSG_MAX];
	char errbody[ERRBODY];
	size_t errbody_len;
};

static void default_log(void *arg, enum apb_remote_log_level level, const char *msg)
{
	(void)arg;
	if (level != APB_REMOTE_LOG_RETRY)
		fprintf(stderr, "apb_remote: %s\n", msg);
}

__attribute__((format(printf, 3, 4))) static void logf_(struct apb_remote *r,
							enum apb_remote_log_level level,
							const char *fmt, ...)
{
	char msg[MSG_MAX * 2];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r->log(r->log_arg, level, msg);
}

/* ---- URLs ---- */

/* The value of every parameter of the query at q ('?' .. the '#' or the
 * end) as "***" at out; returns the end of what it wrote. A parameter
 * without '=' is all value. */
static char *redact_query(const char *q, char *out)
{
	const char *end = q + strcspn(q, "#");

	*out++ = *q++; /* '?' */
	for (;;) {
		size_t n = strcspn(q, "&#");
		const char *eq = memchr(q, '=', n);

		if (eq) {
			memcpy(out, q, (size_t)(eq + 1 - q));
			out += eq + 1 - q;
		}
		if (n) {
			memcpy(out, "***", 3);
			out += 3;
		}
		q += n;
		if (q >= end)
			break;
		*out++ = *q++; /* '&' */
	}
	strcpy(out, end); /* the fragment, never sent */
	return out + strlen(end);
}

/* The authority ends at the first '/', '?' or '#'; its userinfo at the
 * last '@' in it (an unescaped '@' in a password is the user's mistake,
 * but hiding too much is the safe side of it). The query's values go too:
 * a presigned URL carries its signature and credential there. */
char *apb_bundle_redact(const char *where)
{
	const char *auth = strstr(where, "://");
	const char *at, *colon, *rest, *q;
	size_t len = strlen(where);
	char *out, *o;

	if (!apb_bundle_is_url(where) || !auth)
		return strdup(where);
	auth += 3;
	at = memrchr(auth, '@', strcspn(auth, "/?#"));
	colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
	/* at most 3 more bytes for the password and for each parameter */
	out = malloc(4 * len + 8);
	if (!out)
		return NULL;
	if (colon) {
		memcpy(out, where, (size_t)(colon + 1 - where));
		o = out + (colon + 1 - where);
		memcpy(o, "***", 3);
		o += 3;
		rest = at;
	} else {
		o = out;
		rest = where;
	}
	q = memchr(auth, '?', strcspn(auth, "#"));
	if (q) {
		memcpy(o, rest, (size_t)(q - rest));
		redact_query(q, o + (q - rest));
	} else {
		strcpy(o, rest);
	}
	return out;
}

static bool prefix_ci(const char *s, const char *p)
{
	return strncasecmp(s, p, strlen(p)) == 0;
}

int apb_remote_parse_url(const char *url, struct apb_remote_url *u, char *err, size_t err_len)
{
	memset(u, 0, sizeof(*u));
	if (prefix_ci(url, "http://") || prefix_ci(url, "https://")) {
		const char *host = strstr(url, "://") + 3;
		if (!*host || *host == '/')
			return apb_fail(-EINVAL, err, err_len, "%s: no host in the URL", url);
		return 0;
	}
	if (!prefix_ci(url, "s3://"))
		return apb_fail(-EINVAL, err, err_len,
				"%s: not a remote URL (http://, https:// or s3://bucket/key)", url);
	const char *b = url + 5, *slash = strchr(b, '/');
	if (!slash || slash == b || !slash[1])
		return apb_fail(-EINVAL, err, err_len, "%s: an S3 URL is s3://bucket/key", url);
	size_t blen = (size_t)(slash - b);
	if (blen >= sizeof(u->bucket))
		return apb_fail(-EINVAL, err, err_len, "%s: bucket name longer than %zu bytes", url,
				sizeof(u->bucket) - 1);
	for (size_t i = 0; i < blen; i++) {
		unsigned char c = (unsigned char)b[i];
		if (!isalnum(c) && c != '.' && c != '-' && c != '_')
			return apb_fail(-EINVAL, err, err_len,
					"%s: bucket name has '%c' (letters, digits, '.', '-', '_')",
					url, c);
	}
	if (strlen(slash + 1) >= sizeof(u->key))
		return apb_fail(-EINVAL, err, err_len, "%s: key longer than %zu bytes", url,
				sizeof(u->key) - 1);
	memcpy(u->bucket, b, blen);
	strcpy(u->key, slash + 1);
	u->s3 = true;
	return 0;
}

/* Append s to out at *n, escaping as SigV4's canonical URI does (every byte
 * but unreserved ones and, for keys, '/'), so the path curl sends is the
 * one it signs. */
static bool put_escaped(char *out, size_t out_len, size_t *n, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		bool plain = isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/';
		size_t need = plain ? 1 : 3;
		if (*n + need >= out_len)
			return false;
		if (plain) {
			out[(*n)++] = (char)c;
		} else {
			out[(*n)++] = '%';
			out[(*n)++] = hex[c >> 4];
			out[(*n)++] = hex[c & 15];
		}
	}
	out[*n] = '\0';
	return true;
}

static bool dns_bucket(const char *b)
{
	/* a single DNS label: a dotted name would not match AWS's wildcard
	 * certificate, and upper case or '_' is no host name */
	for (; *b; b++)
		if (!(islower((unsigned char)*b) || isdigit((unsigned char)*b) || *b == '-'))
			return false;
	return true;
}

int apb_remote_s3_url(const char *endpoint, const char *bucket, const char *key, bool path_style,
		      char *out, size_t out_len, char *err, size_t err_len)
{
	const char *sep = strstr(endpoint, "://");
	if (!sep || !(prefix_ci(endpoint, "http://") || prefix_ci(endpoint, "https://")) ||
	    !sep[3] || sep[3] == '/')
		return apb_fail(-EINVAL, err, err_len,
				"S3 endpoint %s: not http://HOST[:PORT] or https://...", endpoint);
	size_t elen = strlen(endpoint);
	while (elen && endpoint[elen - 1] == '/')
		elen--;
	/* a host that is an IP address has no bucket subdomains either */
	const char *host = sep + 3;
	bool ip = *host == '[';
	if (!ip) {
		ip = true;
		for (const char *h = host; *h && *h != ':' && *h != '/'; h++)
			ip = ip && (isdigit((unsigned char)*h) || *h == '.');
	}
	int w;
	if (path_style || ip || !dns_bucket(bucket)) {
		w = snprintf(out, out_len, "%.*s/%s/", (int)elen, endpoint, bucket);
	} else {
		size_t scheme = (size_t)(sep + 3 - endpoint);
		w = snprintf(out, out_len, "%.*s%s.%.*s/", (int)scheme, endpoint, bucket,
			     (int)(elen - scheme), endpoint + scheme);
	}
	size_t n = w < 0 ? out_len : (size_t)w;
	if (n >= out_len || !put_escaped(out, out_len, &n, key))
		return apb_fail(-ENAMETOOLONG, err, err_len, "s3://%s/%s: request URL too long",
				bucket, key);
	return 0;
}

/* ---- INI files (AWS credentials and config) ---- */

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* "[ profile   name ]" and "[profile name]" name the same section */
static bool section_is(char *line, const char *want)
{
	char *end = strchr(line, ']');
	if (!end)
		return false;
	*end = '\0';
	char *s = trim(line + 1);
	const char *w = want;
	while (*s && *w) {
		if (isspace((unsigned char)*s) && isspace((unsigned char)*w)) {
			while (isspace((unsigned char)*s))
				s++;
			while (isspace((unsigned char)*w))
				w++;
			continue;
		}
		if (*s++ != *w++)
			return false;
	}
	return !*s && !*w;
}

int apb_remote_ini_get(const char *path, const char *section, const char *key, char *out,
		       size_t out_len)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	char line[4096];
	int rc = -ENOENT;
	bool in = false;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == ' ' || line[0] == '\t')
			continue; /* nested setting ("s3 =" then indented keys) */
		char *s = trim(line);
		if (!*s || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			if (in)
				break; /* the section ended without the key */
			in = section_is(s, section);
			if (in)
				rc = 0;
			continue;
		}
		if (!in)
			continue;
		char *eq = strchr(s, '=');
		if (!eq)
			continue;
		*eq = '\0';
		if (strcasecmp(trim(s), key) != 0)
			continue;
		char *v = trim(eq + 1);
		if (strlen(v) >= out_len) {
			rc = -ENAMETOOLONG;
		} else {
			strcpy(out, v);
			rc = 1;
		}
		break;
	}
	if (ferror(f))
		rc = -EIO;
	fclose(f);
	return rc;
}

/* ---- S3 settings ---- */

struct s3cfg {
	char endpoint[1024];
	char region[64];
	char key[128], secret[256], token[2048];
};

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

static void aws_path(char *out, size_t len, const char *var, const char *file)
{
	const char *v = env(var), *home = env("HOME");
	if (v)
		snprintf(out, len, "%s", v);
	else
		snprintf(out, len, "%s/.aws/%s", home ? home : "", file);
}

/* Look key up in the profile's section of the credentials file, then of
 * the config file; *seen is set when either has the section. */
static int profile_get(const char *cred_path, const char *conf_path, const char *profile,
		       const char *key, char *out, size_t out_len, bool *seen, char *err,
		       size_t err_len)
{
	char conf_section[256];
	if (strcmp(profile, "default") == 0)
		snprintf(conf_section, sizeof(conf_section), "default");
	else
		snprintf(conf_section, sizeof(conf_section), "profile %s", profile);
	const struct {
		const char *path, *section;
	} look[] = {{cred_path, profile}, {conf_path, conf_section}};
	for (size_t i = 0; i < 2; i++) {
		int rc = apb_remote_ini_get(look[i].path, look[i].section, key, out, out_len);
		if (rc == 1) {
			*seen = true;
			return 1;
		}
		if (rc == 0)
			*seen = true;
		else if (rc == -ENAMETOOLONG)
			return apb_fail(rc, err, err_len, "%s: [%s] %s is too long", look[i].path,
					look[i].section, key);
		else if (rc != -ENOENT)
			return apb_fail(rc, err, err_len, "%s: %s", look[i].path, strerror(-rc));
	}
	return 0;
}

/* The first of n values that is set, into out; false if none is. */
static bool first_of(char *out, size_t len, const char *const *values, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (values[i]) {
			snprintf(out, len, "%s", values[i]);
			return true;
		}
	}
	return false;
}

static int s3_settings(const struct apb_remote_options *o, struct s3cfg *c, char *err,
		       size_t err_len)
{
	char cred_path[1024], conf_path[1024];
	aws_path(cred_path, sizeof(cred_path), "AWS_SHARED_CREDENTIALS_FILE", "credentials");
	aws_path(conf_path, sizeof(conf_path), "AWS_CONFIG_FILE", "config");
	const char *profile = o->s3_profile ? o->s3_profile : env("AWS_PROFILE");
	bool named = profile != NULL, seen = false;
	if (!profile)
		profile = "default";
	int rc;
	memset(c, 0, sizeof(*c));

#define PROFILE(key, out)                                                                   \
	do {                                                                                \
		rc = profile_get(cred_path, conf_path, profile, key, out, sizeof(out), &seen, \
				 err, err_len);                                             \
		if (rc < 0)                                                                 \
			return rc;                                                          \
	} while (0)

	/* credentials: the environment's pair, else the profile's, else none */
	const char *k = env("AWS_ACCESS_KEY_ID"), *s = env("AWS_SECRET_ACCESS_KEY");
	if (k && s) {
		if (strlen(k) >= sizeof(c->key) || strlen(s) >= sizeof(c->secret) ||
		    (env("AWS_SESSION_TOKEN") && strlen(env("AWS_SESSION_TOKEN")) >= sizeof(c->token)))
			return apb_fail(-EINVAL, err, err_len,
					"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_SESSION_TOKEN too long");
		strcpy(c->key, k);
		strcpy(c->secret, s);
		if (env("AWS_SESSION_TOKEN"))
			strcpy(c->token, env("AWS_SESSION_TOKEN"));
	} else {
		PROFILE("aws_access_key_id", c->key);
		PROFILE("aws_secret_access_key", c->secret);
		PROFILE("aws_session_token", c->token);
		if (!!c->key[0] != !!c->secret[0])
			return apb_fail(-EINVAL, err, err_len,
					"AWS profile '%s' (%s, %s) has only one of aws_access_key_id and aws_secret_access_key",
					profile, cred_path, conf_path);
	}

	const char *region[] = {o->s3_region, env("AWS_REGION"), env("AWS_DEFAULT_REGION")};
	if (!first_of(c->region, sizeof(c->region), region, 3))
		PROFILE("region", c->region);
	if (!c->region[0])
		strcpy(c->region, "us-east-1");
	const char *endpoint[] = {o->s3_endpoint, env("AWS_ENDPOINT_URL_S3"),
				  env("AWS_ENDPOINT_URL")};
	if (!first_of(c->endpoint, sizeof(c->endpoint), endpoint, 3))
		PROFILE("endpoint_url", c->endpoint);
#undef PROFILE

	/* a profile asked for by name must exist, as the AWS tools insist,
	 * unless the environment already gave everything */
	if (named && !seen && !(k && s))
		return apb_fail(-ENOENT, err, err_len, "AWS profile '%s' is in neither %s nor %s",
				profile, cred_path, conf_path);
	return 0;
}

/* ---- the pool ---- */

static size_t on_header(char *data, size_t size, size_t n, void *arg);
static size_t on_body(char *data, size_t size, size_t n, void *arg);

static CURL *new_handle(struct apb_remote *r)
{
	CURL *h = r->curl->easy_init();
	if (!h)
		return NULL;
	bool ok = r->curl->easy_setopt(h, CURLOPT_URL, r->url) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_MAXCONNECTS, 1L) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)r->connect_timeout_ms) ==
			  CURLE_OK &&
		  /* a stall, not a slow server, is a timeout: < 1 byte/s for the period */
		  r->curl->easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
				   (long)((r->stall_timeout_ms + 999) / 1000)) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_BUFFERSIZE, (long)r->recv_buffer) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_USERAGENT, "apbundlefs/" APB_VERSION) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK &&
		  r->curl->easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK;
	if (ok && r->ca_file[0])
		ok = r->curl->easy_setopt(h, CURLOPT_CAINFO, r->ca_file) == CURLE_OK;
	if (ok && r->s3_signed) {
		char sigv4[128];
		snprintf(sigv4, sizeof(sigv4), "aws:amz:%s:s3", r->region);
		ok = r->curl->easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4) == CURLE_OK &&
		     r->curl->easy_setopt(h, CURLOPT_USERNAME, r->access_key) == CURLE_OK &&
		     r->curl->easy_setopt(h, CURLOPT_PASSWORD, r->secret_key) == CURLE_OK;
	} else if (ok) {
		/* plain HTTP(S): a CDN may redirect; a signed request would not
		 * survive one (the signature covers the host) */
		ok = r->curl->easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L) == CURLE_OK &&
		     r->curl->easy_setopt(h, CURLOPT_MAXREDIRS, 5L) == CURLE_OK;
	}
	if (!ok) {
		r->curl->easy_cleanup(h);
		return NULL;
	}
	return h;
}

/* An idle handle, a new one, or (all pool_size busy) the next one freed. */
static CURL *pool_get(struct apb_remote *r)
{
	apb_mutex_lock(&r->mu);
	for (;;) {
		if (r->nidle) {
			CURL *h = r->idle[--r->nidle];
			apb_mutex_unlock(&r->mu);
			return h;
		}
		if (r->nhandles < r->pool_size) {
			r->nhandles++;
			apb_mutex_unlock(&r->mu);
			CURL *h = new_handle(r);
			if (!h) {
				apb_mutex_lock(&r->mu);
				r->nhandles--;
				pthread_cond_signal(&r->pool_cv);
				apb_mutex_unlock(&r->mu);
			}
			return h;
		}
		apb_cond_wait(&r->pool_cv, &r->mu);
	}
}

static void pool_put(struct apb_remote *r, CURL *h)
{
	apb_mutex_lock(&r->mu);
	r->idle[r->nidle++] = h;
	pthread_cond_signal(&r->pool_cv);
	apb_mutex_unlock(&r->mu);
}

/* ---- callbacks ---- */

static bool parse_u64(const char **p, uint64_t *v)
{
	const char *s = *p;
	if (!isdigit((unsigned char)*s))
		return false;
	uint64_t x = 0;
	for (; isdigit((unsigned char)*s); s++) {
		if (x > (UINT64_MAX - 9) / 10)
			return false;
		x = x * 10 + (uint64_t)(*s - '0');
	}
	*v = x;
	*p = s;
	return true;
}

/* "bytes A-B/T", "bytes A-B/" + "*" (total unknown) or "bytes * /T" (416) */
static void parse_content_range(struct xfer *x, const char *v)
{
	if (strncasecmp(v, "bytes", 5) != 0)
		return;
	v += 5;
	while (*v == ' ')
		v++;
	if (*v == '*') {
		v++;
		if (*v == '/' && (v++, parse_u64(&v, &x->cr_total))) {
			x->has_cr = true;
			x->cr_start = 1;
			x->cr_end = 0; /* no range: start > end */
		}
		return;
	}
	if (!parse_u64(&v, &x->cr_start) || *v++ != '-' || !parse_u64(&v, &x->cr_end) ||
	    *v++ != '/')
		return;
	if (*v == '*')
		x->cr_unknown_total = true;
	else if (!parse_u64(&v, &x->cr_total))
		return;
	x->has_cr = x->cr_end >= x->cr_start;
}

static void copy_value(char *out, size_t len, const char *v)
{
	/* too long to compare: an impossible value, so a check fails */
	if (strlen(v) >= len)
		snprintf(out, len, "(longer than %zu bytes)", len - 1);
	else
		strcpy(out, v);
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct xfer *x = arg;
	size_t len = size * n;
	char line[1024];
	size_t l = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
	memcpy(line, data, l);
	line[l] = '\0';
	char *s = trim(line);
	if (strncmp(s, "HTTP/", 5) == 0) {
		/* a new answer (after a 100 or a redirect): forget the last one */
		memset(x->etag, 0, sizeof(x->etag));
		memset(x->last_modified, 0, sizeof(x->last_modified));
		x->has_cr = x->cr_unknown_total = x->has_cl = false;
		const char *sp = strchr(s, ' ');
		x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		return len;
	}
	char *colon = strchr(s, ':');
	if (!colon)
		return len;
	*colon = '\0';
	char *name = trim(s), *v = trim(colon + 1);
	if (strcasecmp(name, "etag") == 0) {
		copy_value(x->etag, sizeof(x->etag), v);
	} else if (strcasecmp(name, "last-modified") == 0) {
		copy_value(x->last_modified, sizeof(x->last_modified), v);
	} else if (strcasecmp(name, "content-range") == 0) {
		parse_content_range(x, v);
	} else if (strcasecmp(name, "content-length") == 0) {
		const char *p = v;
		x->has_cl = parse_u64(&p, &x->content_length);
	}
	return len;
}

__attribute__((format(printf, 3, 4))) static void xfail(struct xfer *x, int rc, const char *fmt,
							 ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->fail_msg, sizeof(x->fail_msg), fmt, ap);
	va_end(ap);
	x->fail = rc;
}

/* The checks on a 200/206 before its first byte is used: false and x->fail
 * set when the answer is not of the recorded version or not the range. */
static bool check_answer(struct xfer *x)
{
	struct apb_remote *r = x->r;
	uint64_t total;
	if (x->status == 206) {
		if (!x->has_cr || x->cr_unknown_total) {
			xfail(x, -EIO, "HTTP 206 without a usable Content-Range");
			return false;
		}
		total = x->cr_total;
		if (x->cr_start > x->want_off || (!x->learn && x->cr_end < x->want_off + x->want_len - 1)) {
			xfail(x, -EIO, "asked for bytes %llu-%llu, the server sent %llu-%llu",
			      (unsigned long long)x->want_off,
			      (unsigned long long)(x->want_off + x->want_len - 1),
			      (unsigned long long)x->cr_start, (unsigned long long)x->cr_end);
			return false;
		}
		x->pos = x->cr_start;
	} else {
		if (!x->has_cl) {
			xfail(x, -EIO, "HTTP 200 to a range request without a Content-Length");
			return false;
		}
		total = x->content_length;
		x->pos = 0;
	}
	if (x->learn)
		return true;
	if (total != r->size) {
		xfail(x, -ESTALE, "object changed: size %llu at open, now %llu",
		      (unsigned long long)r->size, (unsigned long long)total);
		return false;
	}
	if (r->etag[0] && x->etag[0] && strcmp(r->etag, x->etag) != 0) {
		xfail(x, -ESTALE, "object changed: ETag %s at open, now %s", r->etag, x->etag);
		return false;
	}
	if (!r->etag[0] && r->last_modified[0] && x->last_modified[0] &&
	    strcmp(r->last_modified, x->last_modified) != 0) {
		xfail(x, -ESTALE, "object changed: Last-Modified %s at open, now %s",
		      r->last_modified, x->last_modified);
		return false;
	}
	return true;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct xfer *x = arg;
	size_t len = size * n;
	if (x->status != 200 && x->status != 206) {
		/* an error's body: keep the start for the message */
		size_t room = sizeof(x->errbody) - 1 - x->errbody_len;
		size_t c = len < room ? len : room;
		memcpy(x->errbody + x->errbody_len, data, c);
		x->errbody_len += c;
		x->errbody[x->errbody_len] = '\0';
		return len;
	}
	if (!x->started) {
		x->started = true;
		if (!check_answer(x))
			return CURL_WRITEFUNC_ERROR;
	}
	uint64_t end = x->want_off + x->want_len;
	const char *p = data;
	size_t left = len;
	if (x->pos < x->want_off) { /* a 200, or a wider 206: drop what precedes the range */
		uint64_t skip = x->want_off - x->pos;
		size_t s = skip < left ? (size_t)skip : left;
		p += s;
		left -= s;
		x->pos += s;
	}
	while (left && x->got < x->want_len) {
		const struct iovec *v = &x->iov[x->seg];
		size_t room = v->iov_len - x->seg_off;
		size_t c = left < room ? left : room;
		memcpy((char *)v->iov_base + x->seg_off, p, c);
		p += c;
		left -= c;
		x->pos += c;
		x->got += c;
		x->seg_off += c;
		if (x->seg_off == v->iov_len && x->seg + 1 < x->iovcnt) {
			x->seg++;
			x->seg_off = 0;
		}
	}
	if (x->pos >= end && x->got == x->want_len && left) {
		/* more than the range is coming (a 200 or a wider 206): cut it */
		x->done = true;
		return CURL_WRITEFUNC_ERROR;
	}
	return len;
}

/* ---- one request, and the retry loop around it ---- */

static bool transient_curl(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return true;
	default:
		return false;
	}
}

/* The <Code> of an S3 error body, or "". */
static void s3_code(const struct xfer *x, char *out, size_t len)
{
	out[0] = '\0';
	const char *a = strstr(x->errbody, "<Code>");
	const char *b = a ? strstr(a, "</Code>") : NULL;
	if (a && b && (size_t)(b - a - 6) < len - 1)
		snprintf(out, len, " %.*s", (int)(b - a - 6), a + 6);
}

/* One GET of [want_off, want_off + want_len): 0, -EAGAIN (transient:
 * retry; msg says why) or a final negative errno (msg says why). */
static int transfer(struct apb_remote *r, CURL *h, struct xfer *x, char *msg, size_t msg_len)
{
	char range[64];
	if (x->want_len)
		snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)x->want_off,
			 (unsigned long long)(x->want_off + x->want_len - 1));
	else
		snprintf(range, sizeof(range), "0-0");
	r->curl->easy_setopt(h, CURLOPT_RANGE, range);
	r->curl->easy_setopt(h, CURLOPT_HTTPHEADER, x->learn ? r->open_hdrs : r->read_hdrs);
	r->curl->easy_setopt(h, CURLOPT_HEADERDATA, x);
	r->curl->easy_setopt(h, CURLOPT_WRITEDATA, x);
	char cerr[CURL_ERROR_SIZE] = "";
	r->curl->easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);

	atomic_fetch_add(&r->n_requests, 1);
	CURLcode c = r->curl->easy_perform(h);
	r->curl->easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
	long conns = 0;
	if (r->curl->easy_getinfo(h, CURLINFO_NUM_CONNECTS, &conns) == CURLE_OK && conns > 0)
		atomic_fetch_add(&r->n_connects, (uint64_t)conns);

	if (x->fail) {
		snprintf(msg, msg_len, "%s", x->fail_msg);
		return x->fail;
	}
	bool complete = c == CURLE_OK || (c == CURLE_WRITE_ERROR && x->done);
	if (complete && (x->status == 200 || x->status == 206)) {
		if (!x->started && x->want_len && !x->learn) {
			snprintf(msg, msg_len, "HTTP %ld with an empty body", x->status);
			return -EAGAIN;
		}
		if (x->got == x->want_len || x->learn)
			return 0;
		snprintf(msg, msg_len, "truncated body: %llu of %llu bytes",
			 (unsigned long long)x->got, (unsigned long long)x->want_len);
		return -EAGAIN;
	}
	if (c == CURLE_PEER_FAILED_VERIFICATION) {
		snprintf(msg, msg_len,
			 "%.300s: the server's certificate is not trusted (name the file of its CA's "
			 "certificate in CURL_CA_BUNDLE or SSL_CERT_FILE)",
			 cerr[0] ? cerr : r->curl->easy_strerror(c));
		return -EIO;
	}
	if (c != CURLE_OK) {
		snprintf(msg, msg_len, "%s", cerr[0] ? cerr : r->curl->easy_strerror(c));
		return transient_curl(c) ? -EAGAIN : -EIO;
	}
	char code[80];
	s3_code(x, code, sizeof(code));
	long st = x->status;
	snprintf(msg, msg_len, "HTTP %ld%s", st, code);
	if (st >= 500 || st == 429 || st == 408)
		return -EAGAIN;
	switch (st) {
	case 401:
	case 403:
		snprintf(msg, msg_len, "bad credentials (HTTP %ld%s)", st, code);
		return -EACCES;
	case 404:
		snprintf(msg, msg_len, "not found (HTTP 404%s)", code);
		return -ENOENT;
	case 412:
		snprintf(msg, msg_len, "object changed since open (HTTP 412 to If-Match %s)",
			 r->etag[0] ? r->etag : r->last_modified);
		return -ESTALE;
	case 416:
		snprintf(msg, msg_len, "range bytes=%s not satisfiable (HTTP 416%s; size %llu at open)",
			 range, code, (unsigned long long)r->size);
		return -EIO;
	default:
		snprintf(msg, msg_len, "unexpected HTTP %ld%s", st, code);
		return -EIO;
	}
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* xorshift64*, per thread: jitter needs no quality, only no lock */
static uint64_t jitter_rand(void)
{
	static _Thread_local uint64_t s;
	if (!s) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		s = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)pthread_self() ^ 0x9e3779b97f4a7c15ull;
	}
	s ^= s >> 12;
	s ^= s << 25;
	s ^= s >> 27;
	return s * 0x2545f4914f6cdd1dull;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* One range, retried; the final message goes to the log (and to msg). */
static int fetch(struct apb_remote *r, const struct iovec *iov, int iovcnt, uint64_t off,
		 uint64_t len, bool learn, struct xfer *out, char *msg, size_t msg_len)
{
	uint64_t start = now_ms();
	unsigned attempt = 0;
	int rc;
	for (;;) {
		struct xfer x = {.r = r, .iov = iov, .iovcnt = iovcnt, .want_off = off,
				 .want_len = len, .learn = learn};
		CURL *h = pool_get(r);
		if (!h) {
			snprintf(msg, msg_len, "out of memory for a connection");
			rc = -ENOMEM;
			break;
		}
		rc = transfer(r, h, &x, msg, msg_len);
		pool_put(r, h);
		if (out)
			*out = x;
		if (rc != -EAGAIN)
			break;
		attempt++;
		uint64_t d = r->retry_base_ms;
		for (unsigned i = 1; i < attempt && d < RETRY_CAP_MS; i++)
			d *= 2;
		if (d > RETRY_CAP_MS)
			d = RETRY_CAP_MS;
		d = d / 2 + (d ? jitter_rand() % (d - d / 2 + 1) : 0);
		uint64_t spent = now_ms() - start;
		if (attempt > r->max_retries || spent + d > r->retry_total_ms) {
			char last[MSG_MAX];
			snprintf(last, sizeof(last), "%s", msg);
			snprintf(msg, msg_len, "gave up after %u attempts in %llu ms: %.400s", attempt,
				 (unsigned long long)spent, last);
			rc = -EIO;
			break;
		}
		logf_(r, APB_REMOTE_LOG_RETRY, "%s bytes=%llu-%llu: retry %u in %llu ms: %s", r->name,
		      (unsigned long long)off, (unsigned long long)(off + len - 1), attempt,
		      (unsigned long long)d, msg);
		atomic_fetch_add(&r->n_retries, 1);
		sleep_ms(d);
	}
	if (rc == 0)
		return 0;
	if (!learn) {
		atomic_fetch_add(&r->n_errors, 1);
		logf_(r, APB_REMOTE_LOG_ERROR, "%s bytes=%llu-%llu: %s", r->name,
		      (unsigned long long)off, (unsigned long long)(off + len - 1), msg);
	}
	return rc;
}

/* ---- open, close, reads ---- */

static struct curl_slist *add_header(const struct apb_remote *r, struct curl_slist *l,
				     const char *fmt, const char *v, bool *ok)
{
	char h[IDENT_MAX + 64];
	snprintf(h, sizeof(h), fmt, v);
	struct curl_slist *n = r->curl->slist_append(l, h);
	if (!n) {
		*ok = false;
		return l;
	}
	return n;
}

static int set_identity(struct apb_remote *r, const struct xfer *x, char *err, size_t err_len)
{
	if (x->status == 416) {
		/* bytes=0-N unsatisfiable: there is no byte 0, an empty object
		 * (nginx says "bytes * /0"; RGW sends no Content-Range) */
		if (x->has_cr && x->cr_total != 0)
			return apb_fail(-EIO, err, err_len,
					"%s: HTTP 416 to bytes=0-%llu at open, and not an empty object",
					r->name, (unsigned long long)(x->want_len - 1));
		r->size = 0;
	} else if (x->status == 206) {
		r->size = x->cr_total;
	} else {
		r->size = x->content_length;
		/* a 200 is fair for a range that covers the object (nginx sends
		 * one for an empty file); beyond that, Range was ignored */
		if (r->size > x->want_len)
			logf_(r, APB_REMOTE_LOG_WARN,
			      "%s: the server ignores Range (HTTP 200): each read streams the object from its start",
			      r->name);
	}
	/* a weak ETag never passes If-Match (a strong comparison) */
	if (x->etag[0] && strncmp(x->etag, "W/", 2) != 0)
		snprintf(r->etag, sizeof(r->etag), "%s", x->etag);
	snprintf(r->last_modified, sizeof(r->last_modified), "%s", x->last_modified);
	if (r->etag[0])
		snprintf(r->identity, sizeof(r->identity), "%s", r->etag);
	else if (r->last_modified[0])
		snprintf(r->identity, sizeof(r->identity), "last-modified: %s", r->last_modified);
	else if (r->size)
		logf_(r, APB_REMOTE_LOG_WARN,
		      "%s: neither ETag nor Last-Modified: only a change of size is detected",
		      r->name);

	bool ok = true;
	struct curl_slist *l = NULL;
	if (r->etag[0])
		l = add_header(r, l, "If-Match: %s", r->etag, &ok);
	else if (r->last_modified[0])
		l = add_header(r, l, "If-Unmodified-Since: %s", r->last_modified, &ok);
	for (struct curl_slist *s = r->open_hdrs; s; s = s->next)
		l = add_header(r, l, "%s", s->data, &ok);
	r->read_hdrs = l;
	return ok ? 0 : apb_fail(-ENOMEM, err, err_len, "out of memory");
}

/* The CA file from the environment (see TLS at the top), for an https
 * request URL (an s3:// one's endpoint included). */
static int ca_settings(struct apb_remote *r, char *err, size_t err_len)
{
	const char *var = env("CURL_CA_BUNDLE") ? "CURL_CA_BUNDLE" : "SSL_CERT_FILE";
	const char *path = env(var);

	if (!path || !prefix_ci(r->url, "https://"))
		return 0;
	if (strlen(path) >= sizeof(r->ca_file))
		return apb_fail(-ENAMETOOLONG, err, err_len, "%s: %s= is too long", r->name, var);
	if (access(path, R_OK) != 0) {
		int e = errno;
		return apb_fail(-e, err, err_len, "%s: %s=%s: %s", r->name, var, path, strerror(e));
	}
	strcpy(r->ca_file, path);
	return 0;
}

int apb_remote_open(const char *url, const struct apb_remote_options *o, struct apb_remote **out,
		    char *err, size_t err_len)
{
	static const struct apb_remote_options none;
	struct apb_remote_url u;
	struct s3cfg *c = NULL;
	struct apb_remote *r = NULL;
	char msg[MSG_MAX];
	int rc;
	*out = NULL;
	if (!o)
		o = &none;
	rc = apb_remote_parse_url(url, &u, err, err_len);
	if (rc < 0)
		return rc;
	const struct apb_curl *curl;
	rc = apb_curl_get(&curl, err, err_len);
	if (rc < 0)
		return rc;

	r = calloc(1, sizeof(*r));
	if (!r)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	r->curl = curl;
	if (apb_mutex_init(&r->mu) < 0 || pthread_cond_init(&r->pool_cv, NULL) != 0) {
		free(r);
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	}
	r->pool_size = o->pool_size ? o->pool_size : DEF_POOL;
	if (r->pool_size > MAX_POOL)
		r->pool_size = MAX_POOL;
	r->max_retries = o->max_retries ? o->max_retries : DEF_RETRIES;
	r->retry_total_ms = o->retry_total_ms ? o->retry_total_ms : DEF_RETRY_TOTAL_MS;
	r->retry_base_ms = o->retry_base_ms ? o->retry_base_ms : DEF_RETRY_BASE_MS;
	r->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : DEF_CONNECT_MS;
	r->stall_timeout_ms = o->stall_timeout_ms ? o->stall_timeout_ms : DEF_STALL_MS;
	r->max_request = o->max_request_bytes ? o->max_request_bytes : DEF_MAX_REQUEST;
	r->recv_buffer = o->recv_buffer_bytes ? o->recv_buffer_bytes : DEF_RECV_BUF;
	if (r->recv_buffer > CURL_MAX_READ_SIZE)
		r->recv_buffer = CURL_MAX_READ_SIZE;
	size_t head_bytes = o->head_bytes ? o->head_bytes : DEF_HEAD;
	if (head_bytes > MAX_HEAD)
		head_bytes = MAX_HEAD;
	r->log = o->log ? o->log : default_log;
	r->log_arg = o->log ? o->log_arg : NULL;
	r->name = apb_bundle_redact(url); /* what messages show: no password */
	r->idle = calloc(r->pool_size, sizeof(*r->idle));
	r->head = malloc(head_bytes);
	if (!r->name || !r->idle || !r->head) {
		rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
		goto out;
	}

	if (u.s3) {
		c = calloc(1, sizeof(*c));
		if (!c) {
			rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
			goto out;
		}
		rc = s3_settings(o, c, err, err_len);
		if (rc < 0)
			goto out;
		bool have_endpoint = c->endpoint[0] != '\0';
		if (!have_endpoint)
			snprintf(c->endpoint, sizeof(c->endpoint), "https://s3.%s.amazonaws.com",
				 c->region);
		bool path_style = o->s3_style == APB_REMOTE_STYLE_PATH ||
				  (o->s3_style == APB_REMOTE_STYLE_AUTO && have_endpoint);
		char req[4096];
		rc = apb_remote_s3_url(c->endpoint, u.bucket, u.key, path_style, req, sizeof(req),
				       err, err_len);
		if (rc < 0)
			goto out;
		r->url = strdup(req);
		snprintf(r->region, sizeof(r->region), "%s", c->region);
		bool ok = true;
		if (c->key[0]) {
			/* s3_settings() refused longer ones: they fit */
			_Static_assert(sizeof(r->access_key) >= sizeof(c->key) &&
					       sizeof(r->secret_key) >= sizeof(c->secret),
				       "credentials fit struct apb_remote");
			r->s3_signed = true;
			strcpy(r->access_key, c->key);
			strcpy(r->secret_key, c->secret);
			r->open_hdrs = add_header(r, r->open_hdrs, "%s",
						  "x-amz-content-sha256: UNSIGNED-PAYLOAD", &ok);
			if (c->token[0]) {
				char h[sizeof(c->token) + 32];
				snprintf(h, sizeof(h), "x-amz-security-token: %s", c->token);
				struct curl_slist *n = r->curl->slist_append(r->open_hdrs, h);
				ok = ok && n;
				if (n)
					r->open_hdrs = n;
			}
		}
		if (!ok) {
			rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
			goto out;
		}
	} else {
		r->url = strdup(url);
	}
	if (!r->url) {
		rc = apb_fail(-ENOMEM, err, err_len, "out of memory");
		goto out;
	}

	rc = ca_settings(r, err, err_len);
	if (rc < 0)
		goto out;

	struct iovec iov = {r->head, head_bytes};
	struct xfer x = {0};
	rc = fetch(r, &iov, 1, 0, head_bytes, true, &x, msg, sizeof(msg));
	if (rc < 0 && x.status != 416) {
		apb_fail(rc, err, err_len, "%s: %s", r->name, msg);
		goto out;
	}
	rc = set_identity(r, &x, err, err_len);
	if (rc < 0)
		goto out;
	r->head_len = r->size < head_bytes ? (size_t)r->size : head_bytes;
	if (x.status != 416 && x.got < r->head_len) {
		rc = apb_fail(-EIO, err, err_len, "%s: %llu of the first %zu bytes at open", r->name,
			      (unsigned long long)x.got, r->head_len);
		goto out;
	}
	*out = r;
	r = NULL;
	rc = 0;
out:
	if (c)
		explicit_bzero(c, sizeof(*c));
	free(c);
	apb_remote_close(r);
	return rc;
}

void apb_remote_close(struct apb_remote *r)
{
	if (!r)
		return;
	assert(r->nidle == r->nhandles); /* no read running */
	for (unsigned i = 0; i < r->nidle; i++)
		r->curl->easy_cleanup(r->idle[i]);
	r->curl->slist_free_all(r->open_hdrs);
	r->curl->slist_free_all(r->read_hdrs);
	explicit_bzero(r->secret_key, sizeof(r->secret_key));
	apb_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->pool_cv);
	free(r->idle);
	free(r->head);
	free(r->url);
	free(r->name);
	free(r);
}

uint64_t apb_remote_size(const struct apb_remote *r)
{
	return r->size;
}

const char *apb_remote_identity(const struct apb_remote *r)
{
	return r->identity;
}

const char *apb_remote_url(const struct apb_remote *r)
{
	return r->url;
}

const void *apb_remote_head(const struct apb_remote *r, size_t *len)
{
	*len = r->head_len;
	return r->head;
}

ssize_t apb_remote_preadv(struct apb_remote *r, const struct iovec *iov, int iovcnt,
			  uint64_t off)
{
	uint64_t total = 0;
	char msg[MSG_MAX];
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (iovcnt < 0 || total > SSIZE_MAX || off > r->size || total > r->size - off) {
		atomic_fetch_add(&r->n_errors, 1);
		logf_(r, APB_REMOTE_LOG_ERROR, "%s: read of %llu bytes at %llu outside its %llu bytes",
		      r->name, (unsigned long long)total, (unsigned long long)off,
		      (unsigned long long)r->size);
		return -EINVAL;
	}
	/* Requests of at most max_request bytes; an iovec may straddle two,
	 * so each request gets a window of iovecs, the first and last trimmed
	 * (a small array per call: iovcnt is a run of chunks, not thousands). */
	int i = 0;
	size_t in = 0; /* bytes of iov[i] already requested */
	uint64_t done = 0;
	while (done < total) {
		struct iovec win[64];
		int n = 0;
		uint64_t want = 0;
		while (done + want < total && want < r->max_request && n < 64) {
			if (iov[i].iov_len == in) {
				i++;
				in = 0;
				continue;
			}
			size_t take = iov[i].iov_len - in;
			if (take > r->max_request - want)
				take = (size_t)(r->max_request - want);
			win[n].iov_base = (char *)iov[i].iov_base + in;
			win[n].iov_len = take;
			n++;
			want += take;
			in += take;
		}
		int rc = fetch(r, win, n, off + done, want, false, NULL, msg, sizeof(msg));
		if (rc < 0)
			return rc;
		done += want;
	}
	atomic_fetch_add(&r->n_bytes, total);
	return (ssize_t)total;
}

ssize_t apb_remote_pread(struct apb_remote *r, void *buf, size_t len, uint64_t off)
{
	struct iovec iov = {buf, len};
	return apb_remote_preadv(r, &iov, 1, off);
}

void apb_remote_get_stats(struct apb_remote *r, struct apb_remote_stats *st)
{
	st->requests = atomic_load(&r->n_requests);
	st->retries = atomic_load(&r->n_retries);
	st->connects = atomic_load(&r->n_connects);
	st->bytes = atomic_load(&r->n_bytes);
	st->errors = atomic_load(&r->n_errors);
}
