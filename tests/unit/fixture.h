/* fixture.h - bundles for the unit tests that need a real one but not its
 * bytes: every model empty (or of a given size, zeros), placed at aligned
 * offsets after a manifest of at most 64 KiB. */
#ifndef APB_TEST_FIXTURE_H
#define APB_TEST_FIXTURE_H

#include "test.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <unistd.h>
#include <xxhash.h>

#include <apbundle/bundle.h>

/* Write a v1 bundle of models with these names and sizes (NULL: all
 * empty) to a new file made from path_template (mkstemp: ends in XXXXXX,
 * filled in); returns it. The bytes are zeros and the checksums those of
 * empty models: for tests that need a model's size, not its bytes. */
static char *write_sized_models(char *path_template, const char *const *names,
				const uint64_t *sizes, size_t n)
{
	uint64_t at = 65536;
	char sum[32];
	cJSON *root = cJSON_CreateObject(), *models;
	unsigned char head[16] = "APBUNDLE";
	int fd;

	snprintf(sum, sizeof(sum), "xxh3-64:%016llx",
		 (unsigned long long)XXH3_64bits("", 0));
	cJSON_AddNumberToObject(root, "model_count", (double)n);
	models = cJSON_AddArrayToObject(root, "models");
	for (size_t i = 0; i < n; i++) {
		cJSON *m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "name", names[i]);
		uint64_t size = sizes ? sizes[i] : 0;
		cJSON_AddNumberToObject(m, "offset", (double)at);
		cJSON_AddNumberToObject(m, "size", (double)size);
		at += (size + 4095) / 4096 * 4096;
		cJSON_AddStringToObject(m, "checksum", sum);
		cJSON_AddItemToArray(models, m);
	}
	char *json = cJSON_PrintUnformatted(root);
	uint32_t len = (uint32_t)strlen(json);
	CHECK(16 + len <= 65536);
	head[8] = 1;
	memcpy(head + 12, &len, 4); /* the test machines are little-endian */
	fd = mkstemp(path_template);
	CHECK(fd >= 0);
	CHECK(write(fd, head, 16) == 16);
	CHECK(write(fd, json, len) == (ssize_t)len);
	CHECK(ftruncate(fd, (off_t)at) == 0);
	close(fd);
	free(json);
	cJSON_Delete(root);
	return path_template;
}

/* Open such a bundle (written from path_template) and unlink its file:
 * the open descriptor keeps it readable. */
static struct apb_bundle *open_sized_models(char *path_template,
					    const char *const *names,
					    const uint64_t *sizes, size_t n)
{
	struct apb_bundle *b;
	char err[256];
	char *path = write_sized_models(path_template, names, sizes, n);
	int rc = apb_bundle_open(path, &b, err, sizeof(err));

	if (rc)
		fprintf(stderr, "open: %s\n", err);
	CHECK_EQ(rc, 0);
	unlink(path);
	return b;
}

static struct apb_bundle *open_empty_models(char *path_template,
					    const char *const *names, size_t n)
{
	return open_sized_models(path_template, names, NULL, n);
}

#endif
