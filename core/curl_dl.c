/*
 * curl_dl.c - libcurl loaded on first use (curl_dl.h says why).
 *
 * The one piece of process-wide mutable state in the library outside a
 * caller's object: the table, written once by load() under pthread_once()
 * and only read afterwards. It cannot live in the remote object that needs
 * it, because curl_global_init() must run once per process, before any
 * other libcurl call and not concurrently with one, whichever of several
 * remote objects (several mounts' worth in a tool, or a test) comes first;
 * pthread_once() is what makes "once, and everyone after waits for it"
 * thread-safe without a lock of ours. The result, failure included, is
 * final: a process whose libcurl could not be loaded keeps the message.
 *
 * The version is checked at load: the headers we build against are at
 * least 7.87 (meson.build), and an older libcurl.so.4 found at run time
 * would refuse options remote.c sets (CURLOPT_PROTOCOLS_STR, the write
 * callback's pause/error codes) with a less helpful error per request.
 */
#include "curl_dl.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include "error.h"

#define MIN_VERSION 0x075700 /* 7.87.0, as meson.build asks of the headers */
#define INSTALL_HINT "remote URLs need libcurl (Debian libcurl4)"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct apb_curl table;  /* written by load() only */
static int load_rc;            /* 0, or load()'s negative errno */
static char load_err[512];     /* load()'s message when load_rc != 0 */

/* dlsym() into a function pointer: POSIX guarantees the conversion. */
#define SYM(lib, field, name)                                              \
	do {                                                               \
		*(void **)(&(field)) = dlsym(lib, name);                   \
		if (!(field)) {                                            \
			missing = name;                                    \
			goto fail;                                         \
		}                                                          \
	} while (0)

static void load(void)
{
	CURLcode (*global_init)(long flags);
	curl_version_info_data *(*version_info)(CURLversion v);
	const curl_version_info_data *v;
	const char *missing = NULL;
	CURLcode c;
	void *lib;

	/* RTLD_LOCAL: its symbols and its TLS library's stay out of the
	 * global namespace, where they could bind a later dlopen()'s. */
	lib = dlopen(APB_CURL_SONAME, RTLD_LAZY | RTLD_LOCAL);
	if (!lib) {
		load_rc = -ENOENT;
		snprintf(load_err, sizeof(load_err), INSTALL_HINT ": %s", dlerror());
		return;
	}
	SYM(lib, version_info, "curl_version_info");
	v = version_info(CURLVERSION_NOW);
	if (!v || v->version_num < MIN_VERSION) {
		load_rc = -ENOENT;
		snprintf(load_err, sizeof(load_err),
			 INSTALL_HINT " 7.87 or later: " APB_CURL_SONAME " is %s",
			 v && v->version ? v->version : "of an unknown version");
		goto close;
	}
	SYM(lib, global_init, "curl_global_init");
	SYM(lib, table.easy_init, "curl_easy_init");
	SYM(lib, table.easy_setopt, "curl_easy_setopt");
	SYM(lib, table.easy_perform, "curl_easy_perform");
	SYM(lib, table.easy_getinfo, "curl_easy_getinfo");
	SYM(lib, table.easy_cleanup, "curl_easy_cleanup");
	SYM(lib, table.easy_strerror, "curl_easy_strerror");
	SYM(lib, table.slist_append, "curl_slist_append");
	SYM(lib, table.slist_free_all, "curl_slist_free_all");
	c = global_init(CURL_GLOBAL_DEFAULT);
	if (c != CURLE_OK) {
		load_rc = -EIO;
		snprintf(load_err, sizeof(load_err), APB_CURL_SONAME ": curl_global_init: %s",
			 table.easy_strerror(c));
		return; /* its state may be half made: keep it loaded */
	}
	return;
fail:
	load_rc = -ENOENT;
	snprintf(load_err, sizeof(load_err), INSTALL_HINT ": " APB_CURL_SONAME " has no %s",
		 missing);
close:
	dlclose(lib);
}

int apb_curl_get(const struct apb_curl **out, char *err, size_t err_len)
{
	pthread_once(&once, load);
	if (load_rc)
		return apb_fail(load_rc, err, err_len, "%s", load_err);
	*out = &table;
	return 0;
}
