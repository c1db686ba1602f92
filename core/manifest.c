/*
 * manifest.c - what every manifest parser shares (format.h): reading the
 * manifest's bytes, bounded before they are allocated, and freeing the
 * model table a parser fills.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "apbundle/bundle.h"
#include "format.h"

int apb_manifest_read(const struct apb_source *src, uint64_t off, uint64_t len,
		      uint8_t **out, char *err, size_t err_len)
{
	uint64_t size = apb_source_size(src);
	uint8_t *buf;
	int rc;

	*out = NULL;
	if (len == 0)
		return apb_errf(err, err_len, "manifest length is 0");
	if (len > APB_MANIFEST_MAX)
		return apb_errf(err, err_len,
				"manifest length %llu exceeds the limit of %u bytes",
				(unsigned long long)len, APB_MANIFEST_MAX);
	if (off > size || len > size - off)
		return apb_errf(err, err_len,
				"manifest (%llu bytes at offset %llu) runs past end of file (%llu bytes)",
				(unsigned long long)len, (unsigned long long)off,
				(unsigned long long)size);
	buf = malloc((size_t)len + 1);
	if (!buf)
		return apb_fail(-ENOMEM, err, err_len,
				"out of memory for the manifest");
	rc = apb_source_pread(src, buf, (size_t)len, off);
	if (rc) {
		free(buf);
		return apb_fail(rc, err, err_len, "cannot read the manifest: %s",
				strerror(-rc));
	}
	buf[len] = '\0';
	*out = buf;
	return 0;
}

void apb_manifest_free(struct apb_manifest *m)
{
	free(m->models);
	free(m->names);
	free(m->blocks);
	memset(m, 0, sizeof *m);
}
