/*
 * dl.h - a shared library opened at run time, its functions copied into a
 * caller's table (internal; libcurl for URLs, libmicrohttpd for
 * metrics_listen=). So that a daemon which needs neither maps neither.
 */
#ifndef APB_CORE_DL_H
#define APB_CORE_DL_H

#include <stddef.h>

struct apb_dl_sym {
	const char *name; /* the function's symbol */
	size_t off;       /* where its address goes: offsetof() in the table */
};

/* dlopen(soname, RTLD_LAZY | RTLD_LOCAL), then each of the n symbols'
 * addresses into table + syms[i].off. 0 and the handle in *lib; or -ENOENT,
 * nothing left open, and in err the loader's reason or "SONAME has no
 * NAME". RTLD_LOCAL: the library's symbols (and its TLS library's) stay out
 * of the global namespace, where they could bind a later dlopen()'s. */
int apb_dl_load(const char *soname, const struct apb_dl_sym *syms, size_t n,
		void *table, void **lib, char *err, size_t err_len);

#endif
