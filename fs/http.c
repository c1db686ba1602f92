/*
 * http.c - metrics_listen=ADDR:PORT: the .metrics text over HTTP, for a
 * Prometheus server to scrape (docs/USAGE.md, "Metrics over HTTP").
 *
 * libmicrohttpd serves it, loaded with dlopen() only when the option is
 * given: linked at build time, it and the TLS libraries it pulls in
 * (GnuTLS, nettle, gmp, p11-kit: eleven libraries) would be mapped by every
 * daemon, most of which never serve HTTP (the reason core/curl_dl.c loads
 * libcurl the same way). The build needs its header only.
 *
 * The socket is bound before the mount, so that a bad or busy address
 * refuses the mount with a clear message and no mount is left behind; the
 * server's thread starts after fuse_daemonize() (threads do not survive
 * its fork) and takes the bound socket over. Only loopback addresses are
 * accepted unless metrics_allow_remote is given: the text names the bundle,
 * the mountpoint and every model.
 *
 * One polling thread answers every request in turn, so at most one
 * rendering made here is alive at a time besides the ones being sent
 * (MAX_CONNECTIONS); each is rendered like an open of .metrics
 * (apbfs_doc_render(), under docs.c's render_mu) and freed once sent.
 *
 * Locks: none of its own. The table of functions is written once, before
 * the thread starts, and then only read.
 */
#include "apbfs.h"

#include <microhttpd.h>

#include "../core/dl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MHD_SONAME "libmicrohttpd.so.12"
#define MAX_CONNECTIONS 8
#define CONNECTION_TIMEOUT_S 10
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* libmicrohttpd's functions the server calls, with its own signatures. */
struct mhd {
	void *lib;
	struct MHD_Daemon *(*start_daemon)(unsigned int flags, uint16_t port,
					   MHD_AcceptPolicyCallback apc,
					   void *apc_cls,
					   MHD_AccessHandlerCallback dh,
					   void *dh_cls, ...);
	void (*stop_daemon)(struct MHD_Daemon *d);
	struct MHD_Response *(*response_from_buffer)(
		size_t size, void *buffer, MHD_ContentReaderFreeCallback crfc);
	enum MHD_Result (*add_header)(struct MHD_Response *r,
				      const char *header, const char *content);
	enum MHD_Result (*queue_response)(struct MHD_Connection *c,
					  unsigned int status,
					  struct MHD_Response *r);
	void (*destroy_response)(struct MHD_Response *r);
};

struct apbfs_http {
	struct mhd mhd;
	int fd;                    /* bound and listening; the daemon's once
				    * started */
	struct MHD_Daemon *daemon; /* NULL until started */
	struct apbfs *fs;
};

static int load_mhd(struct mhd *m, char *err, size_t err_len)
{
	static const struct apb_dl_sym syms[] = {
		{"MHD_start_daemon", offsetof(struct mhd, start_daemon)},
		{"MHD_stop_daemon", offsetof(struct mhd, stop_daemon)},
		{"MHD_create_response_from_buffer_with_free_callback",
		 offsetof(struct mhd, response_from_buffer)},
		{"MHD_add_response_header", offsetof(struct mhd, add_header)},
		{"MHD_queue_response", offsetof(struct mhd, queue_response)},
		{"MHD_destroy_response", offsetof(struct mhd, destroy_response)},
	};
	char why[400];
	int rc;

	rc = apb_dl_load(MHD_SONAME, syms, sizeof(syms) / sizeof(syms[0]), m,
			 &m->lib, why, sizeof(why));
	if (rc)
		snprintf(err, err_len, "cannot load %s (Debian: apt-get install "
			 "libmicrohttpd12): %s", MHD_SONAME, why);
	return rc;
}

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	}
	return false;
}

/* "ADDR:PORT" or "[ADDR6]:PORT", numeric, into host and port. */
static int split(const char *spec, char *host, size_t host_len,
		 const char **port)
{
	const char *colon;
	size_t n;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (!close || close[1] != ':')
			return -EINVAL;
		n = (size_t)(close - spec - 1);
		spec++;
		colon = close + 1;
	} else {
		colon = strrchr(spec, ':');
		if (!colon || memchr(spec, ':', (size_t)(colon - spec)))
			return -EINVAL;
		n = (size_t)(colon - spec);
	}
	if (n == 0 || n >= host_len || !colon[1])
		return -EINVAL;
	memcpy(host, spec, n);
	host[n] = '\0';
	*port = colon + 1;
	return 0;
}

/* The socket for spec, bound and listening, its address as bound in
 * shown (port 0 becomes the port the kernel chose). */
static int bind_spec(const char *spec, bool allow_remote, char *shown,
		     size_t shown_len, char *err, size_t err_len)
{
	struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV |
					     AI_PASSIVE,
				 .ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN + 1], h[INET6_ADDRSTRLEN], p[8];
	const char *port;
	char *end;
	unsigned long pn;
	int fd, one = 1, rc;

	if (split(spec, host, sizeof(host), &port) != 0) {
		snprintf(err, err_len, "expected ADDR:PORT or [ADDR6]:PORT, "
			 "e.g. 127.0.0.1:9101");
		return -EINVAL;
	}
	errno = 0;
	pn = strtoul(port, &end, 10);
	if (errno || *end || pn > 65535 || port[0] == '-' || port[0] == '+') {
		snprintf(err, err_len, "port '%s' is not a number from 0 to "
			 "65535", port);
		return -EINVAL;
	}
	rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, err_len, "'%s' is not a numeric IPv4 or IPv6 "
			 "address", host);
		return -EINVAL;
	}
	if (!allow_remote && !is_loopback(ai->ai_addr)) {
		snprintf(err, err_len, "%s is not a loopback address; anyone "
			 "who can reach it could read the model names and "
			 "counters: add -o metrics_allow_remote to mean it", host);
		rc = -EPERM;
		goto out;
	}
	errno = 0; /* before socket(): a failure there keeps its errno */
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 16) != 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) != 0 ||
	    getnameinfo((struct sockaddr *)&ss, sl, h, sizeof(h), p, sizeof(p),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		rc = errno ? -errno : -EIO; /* getnameinfo() sets none */
		snprintf(err, err_len, "%s", strerror(-rc));
		if (fd >= 0)
			close(fd);
		goto out;
	}
	snprintf(shown, shown_len, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s",
		 h, p);
	rc = fd;
out:
	freeaddrinfo(ai);
	return rc;
}

int apbfs_http_prepare(struct apbfs *fs, const char *spec, bool allow_remote,
		       char *err, size_t err_len)
{
	struct apbfs_http *h = calloc(1, sizeof(*h));
	int rc;

	if (!h) {
		snprintf(err, err_len, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	h->fs = fs;
	rc = bind_spec(spec, allow_remote, fs->metrics_listen,
		       sizeof(fs->metrics_listen), err, err_len);
	if (rc < 0) {
		free(h);
		return rc;
	}
	h->fd = rc;
	rc = load_mhd(&h->mhd, err, err_len);
	if (rc) {
		close(h->fd);
		free(h);
		fs->metrics_listen[0] = '\0';
		return rc;
	}
	fs->http = h;
	return 0;
}

static enum MHD_Result reply(struct apbfs_http *h, struct MHD_Connection *c,
			     unsigned int status, char *body, size_t len)
{
	struct MHD_Response *r = h->mhd.response_from_buffer(len, body, free);
	enum MHD_Result ok;

	if (!r) {
		free(body);
		return MHD_NO;
	}
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		h->mhd.add_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	h->mhd.add_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
			  status == MHD_HTTP_OK ? CONTENT_TYPE
						: "text/plain; charset=utf-8");
	ok = h->mhd.queue_response(c, status, r);
	h->mhd.destroy_response(r);
	return ok;
}

static enum MHD_Result reply_text(struct apbfs_http *h,
				  struct MHD_Connection *c,
				  unsigned int status, const char *text)
{
	char *body = strdup(text);

	return body ? reply(h, c, status, body, strlen(body)) : MHD_NO;
}

/* GET /metrics (and /, for a person with a browser): the .metrics text;
 * other paths 404, other methods 405. A request body is never read. */
static enum MHD_Result handle(void *cls, struct MHD_Connection *c,
			      const char *url, const char *method,
			      const char *version, const char *upload_data,
			      size_t *upload_data_size, void **con_cls)
{
	struct apbfs_http *h = cls;
	char *text;
	size_t len;

	(void)version;
	(void)upload_data;
	(void)upload_data_size;
	(void)con_cls;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply_text(h, c, MHD_HTTP_METHOD_NOT_ALLOWED,
				  "only GET and HEAD\n");
	if (strcmp(url, "/metrics") != 0 && strcmp(url, "/") != 0)
		return reply_text(h, c, MHD_HTTP_NOT_FOUND,
				  "not found; the metrics are at /metrics\n");
	text = apbfs_doc_render(h->fs, APBFS_METRICS, &len);
	if (!text)
		return reply_text(h, c, MHD_HTTP_INTERNAL_SERVER_ERROR,
				  "out of memory\n");
	return reply(h, c, MHD_HTTP_OK, text, len);
}

int apbfs_http_start(struct apbfs *fs)
{
	struct apbfs_http *h = fs->http;

	if (!h)
		return 0;
	h->daemon = h->mhd.start_daemon(
		MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handle, h,
		MHD_OPTION_LISTEN_SOCKET, (MHD_socket)h->fd,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned int)MAX_CONNECTIONS,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)CONNECTION_TIMEOUT_S,
		MHD_OPTION_END);
	return h->daemon ? 0 : -EIO;
}

void apbfs_http_stop(struct apbfs *fs)
{
	struct apbfs_http *h = fs->http;

	if (!h)
		return;
	if (h->daemon)
		h->mhd.stop_daemon(h->daemon); /* closes the socket too */
	else
		close(h->fd);
	/* The library stays loaded: the process is about to exit, and a
	 * library with TLS state is not safe to unload (curl_dl.h). */
	free(h);
	fs->http = NULL;
}
