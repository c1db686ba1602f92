/*
 * control.c - the commands written to /.control, one per line:
 *   evict NAME     drop the model's chunks from memory (not a pinned one's)
 *   clear          drop every chunk but pinned ones, memory back to the OS
 *   reset-stats    zero the counters (not the memory state)
 *   prefetch NAME  load the model in the background (prefetch rules);
 *                  EBUSY if the prefetch queue is full
 *   pin NAME       load the model whole and keep it; the write returns when
 *                  it is loaded, ENOSPC if it does not fit the budget
 *   unpin NAME     let the model's chunks be evicted again
 * NAME is everything after the first space, so names with spaces work. An
 * unknown command or name fails the write with EINVAL.
 *
 * Lines, not writes, are the commands: the kernel splits a long write (a
 * script piped in) wherever its pages end, and a writer may send a line
 * in pieces, so a piece run alone could name another model ("evict a" of
 * "evict ab"). Each open handle keeps the unfinished line (struct
 * apbfs_control_line) until a write brings its newline; close() runs a
 * last line without one (through FLUSH, so close() returns its error and
 * `printf clear > .control` works). A line longer than the longest
 * command, "prefetch " and a name of APB_NAME_MAX bytes (and a '\r'),
 * fails its write with ENAMETOOLONG, and the rest of that line up to its
 * newline is dropped: its tail is no command. A failing line fails its
 * write; the lines before it in the write have run, those after it are
 * dropped (with any unfinished line after them).
 */
#include "apbfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static int find_model(struct apbfs *fs, const char *arg, size_t len,
		      size_t *index)
{
	char name[APB_NAME_MAX + 1];

	if (len == 0 || len > APB_NAME_MAX || memchr(arg, '\0', len))
		return -EINVAL; /* "evict a\0junk" is not "evict a" */
	memcpy(name, arg, len);
	name[len] = '\0';
	return apb_bundle_find(fs->bundle, name, index) ? -EINVAL : 0;
}

static bool is_word(const char *line, size_t len, const char *word)
{
	size_t n = strlen(word);
	return len == n && memcmp(line, word, n) == 0;
}

/* The cache returns its own slots to the OS; the reply buffers of reads
 * that spanned chunks were malloc()ed by worker threads, and glibc keeps
 * freed memory in per-thread arenas. `clear` promises the RSS falls back
 * near its size at mount, so hand those pages back too. */
static void release_heap(void)
{
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

static void reset_stats(struct apbfs *fs)
{
	apb_cache_reset_stats(fs->cache);
	atomic_store(&fs->io.read_requests, 0);
	atomic_store(&fs->io.reads_sequential, 0);
	atomic_store(&fs->io.reads_random, 0);
	atomic_store(&fs->io.order_chunks, 0);
	atomic_store(&fs->io.order_hits, 0);
	atomic_store(&fs->io.order_stopped, 0);
	atomic_store(&fs->io.bytes_served, 0);
	atomic_store(&fs->io.errors, 0);
	atomic_store(&fs->io.checksum_errors, 0);
	for (size_t i = 0; i < apb_bundle_count(fs->bundle); i++)
		atomic_store(&fs->opens[i], 0);
}

int apbfs_control(struct apbfs *fs, const char *line, size_t len)
{
	const char *sp;
	size_t cmd_len, index;

	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (len == 0)
		return 0; /* blank lines are harmless */
	sp = memchr(line, ' ', len);
	cmd_len = sp ? (size_t)(sp - line) : len;
	if (!sp) {
		if (is_word(line, len, "clear")) {
			apb_cache_clear(fs->cache);
			release_heap();
			return 0;
		}
		if (is_word(line, len, "reset-stats")) {
			reset_stats(fs);
			return 0;
		}
		return -EINVAL;
	}
	if (is_word(line, cmd_len, "evict") || is_word(line, cmd_len, "pin") ||
	    is_word(line, cmd_len, "unpin") ||
	    is_word(line, cmd_len, "prefetch")) {
		char cmd[16];
		int rc = find_model(fs, sp + 1, len - cmd_len - 1, &index);
		if (rc)
			return rc;
		if (is_word(line, cmd_len, "evict")) {
			apb_cache_evict_model(fs->cache, (uint32_t)index);
			return 0;
		}
		memcpy(cmd, line, cmd_len);
		cmd[cmd_len] = '\0';
		return apbfs_models_control(fs, cmd, (uint32_t)index);
	}
	return -EINVAL;
}

/* The longest legal line: "prefetch NAME\r" with the longest name. */
#define LINE_MAX_BYTES (sizeof("prefetch ") - 1 + APB_NAME_MAX + 1)

struct apbfs_control_line {
	struct apb_mutex mu;  /* writes and flushes of dup()ed descriptors */
	bool skipping;        /* dropping an overlong line up to its newline */
	size_t len;
	char buf[LINE_MAX_BYTES];
};

struct apbfs_control_line *apbfs_control_new(void)
{
	struct apbfs_control_line *c = malloc(sizeof(*c));

	if (!c)
		return NULL;
	if (apb_mutex_init(&c->mu) != 0) {
		free(c);
		return NULL;
	}
	c->skipping = false;
	c->len = 0;
	return c;
}

void apbfs_control_free(struct apbfs_control_line *c)
{
	if (!c)
		return;
	apb_mutex_destroy(&c->mu);
	free(c);
}

/* Run the kept line completed by bytes [p, p + n) (c->mu held). */
static int run_line(struct apbfs *fs, struct apbfs_control_line *c,
		    const char *p, size_t n)
{
	apb_assert_held(&c->mu);
	if (c->len == 0)
		return apbfs_control(fs, p, n);
	memcpy(c->buf + c->len, p, n);
	n += c->len;
	c->len = 0;
	return apbfs_control(fs, c->buf, n);
}

int apbfs_control_write(struct apbfs *fs, struct apbfs_control_line *c,
			const char *buf, size_t size)
{
	const char *p = buf, *end = buf + size;
	int rc = 0;

	apb_mutex_lock(&c->mu);
	while (p < end && rc == 0) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((nl ? nl : end) - p);

		if (c->skipping) {
			c->skipping = !nl;
		} else if (c->len + n > LINE_MAX_BYTES) {
			c->len = 0;
			c->skipping = !nl;
			rc = -ENAMETOOLONG;
		} else if (!nl) {
			memcpy(c->buf + c->len, p, n);
			c->len += n;
		} else {
			rc = run_line(fs, c, p, n);
		}
		p = nl ? nl + 1 : end;
	}
	/* The write failed: what follows the failing line is not run, and an
	 * unfinished line among it must not be finished by the next write. */
	if (rc && p < end && end[-1] != '\n')
		c->skipping = true;
	apb_mutex_unlock(&c->mu);
	return rc;
}

int apbfs_control_flush(struct apbfs *fs, struct apbfs_control_line *c)
{
	int rc = 0;

	apb_mutex_lock(&c->mu);
	if (c->len > 0 && !c->skipping)
		rc = apbfs_control(fs, c->buf, c->len);
	c->len = 0;
	c->skipping = false;
	apb_mutex_unlock(&c->mu);
	return rc;
}
