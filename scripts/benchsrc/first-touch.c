/*
 * first-touch.c - what it costs user space to read, for the first time,
 * memory that an O_DIRECT read has just filled: the daemon's position when
 * it checks a version 2 block's XXH3 in a slot that `clear` gave back
 * (docs/PERFORMANCE.md, "Huge pages for version 2").
 *
 * Reads 1 GiB of FILE from byte 4096 on with O_DIRECT in 1 MiB requests
 * into an anonymous mapping and hashes each 64 KiB after its request, as
 * the daemon does. With "fresh" the mapping is new, so the kernel faults
 * its pages in for the read and user space first touches them in the hash;
 * with "touched" user space writes every page before the reads start; with
 * "populated" each request's pages are faulted in by
 * madvise(MADV_POPULATE_WRITE) right before it (counted in its read time);
 * with "huge" the new mapping starts on a 2 MiB boundary and is marked
 * MADV_HUGEPAGE, as the daemon's slots for version 2 bundles are.
 * Prints the seconds spent in the reads and in the hashes.
 *
 *   cc -O2 -o /tmp/first-touch scripts/benchsrc/first-touch.c -lxxhash
 *   sync; echo 3 > /proc/sys/vm/drop_caches
 *   /tmp/first-touch fresh|touched|populated|huge FILE
 *
 * Not part of apbundlefs.
 */
#define _GNU_SOURCE
#include <xxhash.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TOTAL (1ul << 30)
#define REQUEST (1ul << 20)
#define BLOCK (64ul << 10)  /* a version 2 block, hashed as a unit */
#define HUGE (2ul << 20)

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double t, reading = 0, hashing = 0;
	XXH64_hash_t sum = 0;
	char *buf;
	int fd;

	if (argc != 3 || (strcmp(argv[1], "fresh") && strcmp(argv[1], "touched") &&
			  strcmp(argv[1], "populated") && strcmp(argv[1], "huge"))) {
		fprintf(stderr, "usage: first-touch fresh|touched|populated|huge FILE\n");
		return 2;
	}
	fd = open(argv[2], O_RDONLY | O_DIRECT);
	/* HUGE more than needed, so that a 2 MiB boundary lies inside */
	buf = mmap(NULL, TOTAL + HUGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (fd < 0 || buf == MAP_FAILED) {
		perror(argv[2]);
		return 1;
	}
	if (!strcmp(argv[1], "huge")) {
		buf += (HUGE - (uintptr_t)buf % HUGE) % HUGE;
		if (madvise(buf, TOTAL, MADV_HUGEPAGE) != 0) {
			perror("MADV_HUGEPAGE");
			return 1;
		}
	}
	if (!strcmp(argv[1], "touched"))
		memset(buf, 1, TOTAL);
	for (size_t off = 0; off < TOTAL; off += REQUEST) {
		t = now();
		if (!strcmp(argv[1], "populated") &&
		    madvise(buf + off, REQUEST, MADV_POPULATE_WRITE) != 0) {
			perror("MADV_POPULATE_WRITE");
			return 1;
		}
		if (pread(fd, buf + off, REQUEST, (off_t)(4096 + off)) != (ssize_t)REQUEST) {
			fprintf(stderr, "%s: short read or error at %zu (needs 1 GiB + 4 KiB)\n",
				argv[2], off);
			return 1;
		}
		reading += now() - t;
		t = now();
		for (size_t c = 0; c < REQUEST; c += BLOCK)
			sum += XXH3_64bits(buf + off + c, BLOCK);
		hashing += now() - t;
	}
	printf("%s: read %.2f s, hash %.2f s (%.1f GB/s) [%016llx]\n", argv[1],
	       reading, hashing, (double)TOTAL / hashing / 1e9,
	       (unsigned long long)sum);
	return 0;
}
