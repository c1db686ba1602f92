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
#include <stddef.h>
#include <stdio.h>

#include "dl.h"
#include "error.h"

#define MIN_VERSION 0x075700 /* 7.87.0, as meson.build asks of the headers */
#define INSTALL_HINT "remote URLs need libcurl (Debian libcurl4)"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct apb_curl table;  /* written by load() only */
static int load_rc;            /* 0, or load()'s negative errno */
static char load_err[512];     /* load()'s message when load_rc != 0 */

/* What load() takes from the library: the table, and two functions only
 * load() calls. */
struct loaded {
	struct apb_curl t;
	curl_version_info_data *(*version_info)(CURLversion v);
	CURLcode (*global_init)(long flags);
};

#define SYM(name, field) {name, offsetof(struct loaded, field)}

static const struct apb_dl_sym syms[] = {
	SYM("curl_version_info", version_info),
	SYM("curl_global_init", global_init),
	SYM("curl_easy_init", t.easy_init),
	SYM("curl_easy_setopt", t.easy_setopt),
	SYM("curl_easy_perform", t.easy_perform),
	SYM("curl_easy_getinfo", t.easy_getinfo),
	SYM("curl_easy_cleanup", t.easy_cleanup),
	SYM("curl_easy_strerror", t.easy_strerror),
	SYM("curl_slist_append", t.slist_append),
	SYM("curl_slist_free_all", t.slist_free_all),
};

static void load(void)
{
	const curl_version_info_data *v;
	struct loaded l;
	char why[400];
	CURLcode c;
	void *lib;

	if (apb_dl_load(APB_CURL_SONAME, syms, sizeof(syms) / sizeof(syms[0]),
			&l, &lib, why, sizeof(why)) != 0) {
		load_rc = -ENOENT;
		snprintf(load_err, sizeof(load_err), INSTALL_HINT ": %s", why);
		return;
	}
	v = l.version_info(CURLVERSION_NOW);
	if (!v || v->version_num < MIN_VERSION) {
		load_rc = -ENOENT;
		snprintf(load_err, sizeof(load_err),
			 INSTALL_HINT " 7.87 or later: " APB_CURL_SONAME " is %s",
			 v && v->version ? v->version : "of an unknown version");
		dlclose(lib);
		return;
	}
	c = l.global_init(CURL_GLOBAL_DEFAULT);
	if (c != CURLE_OK) {
		load_rc = -EIO;
		snprintf(load_err, sizeof(load_err), APB_CURL_SONAME ": curl_global_init: %s",
			 l.t.easy_strerror(c));
		return; /* its state may be half made: keep it loaded */
	}
	table = l.t;
}

int apb_curl_get(const struct apb_curl **out, char *err, size_t err_len)
{
	pthread_once(&once, load);
	if (load_rc)
		return apb_fail(load_rc, err, err_len, "%s", load_err);
	*out = &table;
	return 0;
}
