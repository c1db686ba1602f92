/*
 * dl.c - a shared library opened at run time (dl.h).
 */
#include "dl.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

int apb_dl_load(const char *soname, const struct apb_dl_sym *syms, size_t n,
		void *table, void **lib, char *err, size_t err_len)
{
	void *h = dlopen(soname, RTLD_LAZY | RTLD_LOCAL);

	if (!h) {
		snprintf(err, err_len, "%s", dlerror());
		return -ENOENT;
	}
	for (size_t i = 0; i < n; i++) {
		void *f = dlsym(h, syms[i].name);

		if (!f) {
			snprintf(err, err_len, "%s has no %s", soname, syms[i].name);
			dlclose(h);
			return -ENOENT;
		}
		/* POSIX guarantees a function's address survives the trip
		 * through void *; copy it, not cast it, past -Wpedantic. */
		memcpy((char *)table + syms[i].off, &f, sizeof(f));
	}
	*lib = h;
	return 0;
}
