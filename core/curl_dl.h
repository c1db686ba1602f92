/*
 * curl_dl.h - libcurl, loaded at run time with dlopen("libcurl.so.4") the
 * first time a URL is opened (core/remote.c is the only user).
 *
 * Why: linked at build time, libcurl and the thirty libraries it pulls in
 * (TLS, Kerberos, LDAP, ...) were mapped by every process that used
 * libapbundle, a daemon serving a local file included: 5.7 MiB more RSS and
 * about 3 ms more start-up (README.md, "Memory"). Loaded here, only a
 * process that opens a URL pays for it, and a machine without libcurl can
 * still mount local files. The build needs libcurl's headers only.
 *
 * The table holds the nine functions remote.c calls, with libcurl's own
 * signatures, so that the calls read as libcurl's do. It is filled once
 * and never changes or goes away; the library stays loaded until the
 * process exits (libcurl and its TLS library do not support being unloaded
 * while other code may hold their state, and curl_global_cleanup() is not
 * thread-safe).
 *
 * Internal to the library; not installed.
 */
#ifndef APB_CORE_CURL_DL_H
#define APB_CORE_CURL_DL_H

#include <stddef.h>

#include <curl/curl.h>

#define APB_CURL_SONAME "libcurl.so.4"

struct apb_curl {
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *h, CURLoption opt, ...);
	CURLcode (*easy_perform)(CURL *h);
	CURLcode (*easy_getinfo)(CURL *h, CURLINFO info, ...);
	void (*easy_cleanup)(CURL *h);
	const char *(*easy_strerror)(CURLcode c);
	struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
	void (*slist_free_all)(struct curl_slist *l);
};

/* The table, libcurl loaded and curl_global_init() done on the first call
 * in the process (thread-safe; later calls return the first one's result):
 * 0 and *out, or a negative errno and one line in err that names the
 * library and what to install (-ENOENT: not found or too old; -EIO: its
 * initialization failed). */
int apb_curl_get(const struct apb_curl **out, char *err, size_t err_len);

#endif
