/*
 * read_model.c - a program built against the installed libapbundle-dev
 * (scripts/test.sh, stage deb: cc read_model.c $(pkg-config --cflags
 * --libs apbundle)): read model NAME of BUNDLE through the library and
 * compare it with FILE, the bytes it was made from.
 *
 *   read_model BUNDLE NAME FILE      exit 0 if equal, 1 otherwise
 */
#include <apbundle/bundle.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	struct apb_bundle *b = NULL;
	char err[256], got[65536], want[65536];
	size_t index;
	uint64_t off = 0;
	FILE *f = NULL;
	int rc = 1;

	if (argc != 4) {
		fprintf(stderr, "usage: read_model BUNDLE NAME FILE\n");
		return 2;
	}
	if (apb_bundle_open(argv[1], &b, err, sizeof(err)) != 0) {
		fprintf(stderr, "read_model: %s: %s\n", argv[1], err);
		return 1;
	}
	if (apb_bundle_find(b, argv[2], &index) != 0) {
		fprintf(stderr, "read_model: no model '%s'\n", argv[2]);
		goto out;
	}
	f = fopen(argv[3], "rb");
	if (!f) {
		perror(argv[3]);
		goto out;
	}
	for (;;) {
		long n = apb_bundle_read(b, index, off, got, sizeof(got));
		size_t m = fread(want, 1, sizeof(want), f);

		if (n < 0 || (size_t)n != m || memcmp(got, want, m) != 0) {
			fprintf(stderr, "read_model: bytes differ at %llu\n",
				(unsigned long long)off);
			goto out;
		}
		if (n == 0)
			break;
		off += (uint64_t)n;
	}
	printf("ok: %s: %llu bytes as in %s\n", argv[2],
	       (unsigned long long)off, argv[3]);
	rc = 0;
out:
	if (f)
		fclose(f);
	apb_bundle_close(b);
	return rc;
}
