/*
 * test_replay.c - apbreplay's modules: the trace reader refuses what
 * docs/FORMAT.md ("Trace files") forbids, the library's LRU and Belady's
 * OPT give the textbook numbers, prefetch records are replayed as the
 * daemon runs them, A0 keeps the chunks it should and shares one slot
 * among the rest, and the keymap under OPT keeps every key it should.
 */
#include "keymap.h"
#include "replay.h"
#include "tracefile.h"
#include "test.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CS 4096u

/* A trace being built in memory: one model table, records appended. */
struct build {
	unsigned char buf[1 << 16];
	size_t len;
	uint64_t records;
	uint64_t header_bytes;
	uint64_t time;
};

static void build_start(struct build *b, const uint64_t *sizes, uint32_t n)
{
	memset(b, 0, sizeof(*b));
	memcpy(b->buf, APB_TRACE_MAGIC, 8);
	apb_trace_put_u32(b->buf + APB_TRACE_OFF_VERSION, APB_TRACE_VERSION);
	apb_trace_put_u32(b->buf + APB_TRACE_OFF_RECORD_BYTES, 16);
	apb_trace_put_u32(b->buf + APB_TRACE_OFF_CHUNK_SIZE, CS);
	apb_trace_put_u32(b->buf + APB_TRACE_OFF_MODEL_COUNT, n);
	apb_trace_put_u32(b->buf + APB_TRACE_OFF_FLAGS, APB_TRACE_F_COMPLETE);
	b->len = APB_TRACE_HEADER_FIXED;
	for (uint32_t i = 0; i < n; i++) {
		apb_trace_put_u64(b->buf + b->len, sizes[i]);
		b->len += 16; /* size, name length 0, padding */
	}
	b->len = (b->len + 15) & ~(size_t)15;
	b->header_bytes = b->len;
	apb_trace_put_u32(b->buf + APB_TRACE_OFF_HEADER_BYTES,
			  (uint32_t)b->len);
}

static void add(struct build *b, uint32_t kind, uint32_t model,
		uint64_t chunk, uint32_t count)
{
	struct apb_trace_record r = {b->time, model, count, chunk, kind};

	b->time += 1000;
	apb_trace_pack(&r, b->buf + b->len);
	b->len += 16;
	b->records++;
	apb_trace_put_u64(b->buf + APB_TRACE_OFF_RECORDS, b->records);
}

static void demand(struct build *b, uint32_t model, uint64_t chunk)
{
	add(b, APB_TRACE_KIND_DEMAND, model, chunk, 1);
}

/* Write the first len bytes to a fresh file; returns its path. */
static char *write_file(const struct build *b, size_t len)
{
	char *path = strdup("/tmp/test_replay.XXXXXX");
	int fd;

	CHECK(path);
	fd = mkstemp(path);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, b->buf, len), (long long)len);
	close(fd);
	return path;
}

static void open_ok(const struct build *b, struct trace *t, char *warn)
{
	char err[512] = "", w[512];
	char *path = write_file(b, b->len);
	int rc = trace_open(path, t, err, sizeof(err), warn ? warn : w,
			    sizeof(w));

	if (rc)
		fprintf(stderr, "trace_open: %s\n", err);
	CHECK_EQ(rc, 0);
	unlink(path);
	free(path);
}

/* A one-model trace of size bytes demanding the chunks of seq, opened. */
static void open_demands(struct trace *t, uint64_t size, const uint64_t *seq,
			 size_t n)
{
	struct build b;

	build_start(&b, &size, 1);
	for (size_t i = 0; i < n; i++)
		demand(&b, 0, seq[i]);
	open_ok(&b, t, NULL);
}

#define OPEN_DEMANDS(t, size, seq) \
	open_demands(t, size, seq, sizeof(seq) / sizeof(seq[0]))

/* The message trace_open() refuses the first len bytes of b with. */
static void refused(const struct build *b, size_t len, const char *why)
{
	char err[512] = "", warn[512];
	char *path = write_file(b, len);
	struct trace t;

	CHECK_EQ(trace_open(path, &t, err, sizeof(err), warn, sizeof(warn)),
		 -EINVAL);
	CHECK_STR_CONTAINS(err, why);
	unlink(path);
	free(path);
}

/* A loop over 4 chunks with 3 slots: LRU always evicts the chunk needed
 * next (0 hits); OPT keeps two of the three (worked out by hand: misses
 * at accesses 0-3, then every third access from 6 on: 9 misses). */
static void test_loop_lru_no_hits_opt_exact(void)
{
	uint64_t size = 4 * CS;
	struct replay_result r;
	struct build b;
	struct trace t;

	build_start(&b, &size, 1);
	for (int pass = 0; pass < 5; pass++)
		for (uint64_t c = 0; c < 4; c++)
			demand(&b, 0, c);
	open_ok(&b, &t, NULL);
	CHECK_EQ(t.demand, 20);
	CHECK_EQ(replay_policy(&t, APB_EVICT_LRU, 3 * CS, true, &r), 0);
	CHECK_EQ(r.demand, 20);
	CHECK_EQ(r.hits, 0);
	CHECK_EQ(r.reuse_hits, 0);
	CHECK_EQ(r.misses, 20);
	CHECK_EQ(r.loaded_bytes, 20 * CS);
	CHECK_EQ(r.served_bytes, 20 * CS);
	CHECK_EQ(replay_opt(&t, 3 * CS, &r), 0);
	CHECK_EQ(r.hits, 11);
	CHECK_EQ(r.misses, 9);
	CHECK_EQ(r.loaded_bytes, 9 * CS);
	CHECK_EQ(r.served_bytes, 20 * CS);
	/* A budget that is not a whole number of chunks rounds down. */
	CHECK_EQ(replay_opt(&t, 4 * CS - 1, &r), 0);
	CHECK_EQ(r.hits, 11);
	/* Room for all four: only the cold misses. */
	CHECK_EQ(replay_policy(&t, APB_EVICT_LRU, 4 * CS, true, &r), 0);
	CHECK_EQ(r.misses, 4);
	CHECK_EQ(r.reuse_hits, 16);
	trace_close(&t);
}

/* The reference string of Silberschatz et al., "Operating System
 * Concepts", with 3 frames: 9 page faults for OPT, 12 for LRU. */
static void test_textbook_reference_string(void)
{
	static const uint64_t ref[] = {7, 0, 1, 2, 0, 3, 0, 4, 2, 3,
				       0, 3, 2, 1, 2, 0, 1, 7, 0, 1};
	struct replay_result r;
	struct trace t;

	OPEN_DEMANDS(&t, 8 * CS, ref);
	CHECK_EQ(replay_opt(&t, 3 * CS, &r), 0);
	CHECK_EQ(r.misses, 9);
	CHECK_EQ(r.hits, 11);
	CHECK_EQ(replay_policy(&t, APB_EVICT_LRU, 3 * CS, true, &r), 0);
	CHECK_EQ(r.misses, 12);
	CHECK_EQ(r.hits, 8);
	/* LFU-DA, whatever its choices, counts every access once. */
	CHECK_EQ(replay_policy(&t, APB_EVICT_LFU, 3 * CS, true, &r), 0);
	CHECK_EQ(r.hits + r.misses, 20);
	CHECK(r.hits <= 11); /* never better than OPT */
	/* A0 keeps 0 (5 accesses) and 2 (4); the other four share the third
	 * frame, and only 3 3 and 1 ... 1 meet there: 10 hits. */
	CHECK_EQ(replay_a0(&t, 3 * CS, &r), 0);
	CHECK_EQ(r.hits, 10);
	CHECK_EQ(r.misses, 10);
	trace_close(&t);
}

/* Bytes follow the chunks' real lengths: a model's last chunk is short,
 * and two models' chunk 0 are two different chunks. */
static void test_bytes_follow_chunk_lengths(void)
{
	uint64_t sizes[2] = {2 * CS + 100, 10};
	struct replay_result r;
	struct build b;
	struct trace t;

	build_start(&b, sizes, 2);
	demand(&b, 0, 2);
	demand(&b, 1, 0);
	demand(&b, 0, 0);
	demand(&b, 0, 2);
	open_ok(&b, &t, NULL);
	CHECK_EQ(replay_policy(&t, APB_EVICT_LRU, 8 * CS, true, &r), 0);
	CHECK_EQ(r.misses, 3);
	CHECK_EQ(r.hits, 1);
	CHECK_EQ(r.loaded_bytes, 100 + 10 + CS);
	CHECK_EQ(r.served_bytes, 100 + 10 + CS + 100);
	CHECK_EQ(replay_opt(&t, 8 * CS, &r), 0);
	CHECK_EQ(r.loaded_bytes, 100 + 10 + CS);
	CHECK_EQ(r.served_bytes, 100 + 10 + CS + 100);
	trace_close(&t);
}

/* A prefetch record loads its run ahead: the reads that follow hit, and
 * none of them is a reuse. Skipped, the reads miss. */
static void test_prefetch_records(void)
{
	uint64_t size = 8 * CS;
	struct replay_result r;
	struct build b;
	struct trace t;

	build_start(&b, &size, 1);
	add(&b, APB_TRACE_KIND_PREFETCH, 0, 0, 4);
	for (uint64_t c = 0; c < 4; c++)
		demand(&b, 0, c);
	/* A run past the model's end is clipped, as the daemon clips it. */
	add(&b, APB_TRACE_KIND_PREFETCH, 0, 6, 16);
	demand(&b, 0, 7);
	open_ok(&b, &t, NULL);
	CHECK_EQ(t.demand, 5);
	CHECK_EQ(replay_policy(&t, APB_EVICT_LRU, 16 * CS, true, &r), 0);
	CHECK_EQ(r.hits, 5);
	CHECK_EQ(r.reuse_hits, 0);
	CHECK_EQ(r.misses, 0);
	CHECK_EQ(r.prefetch_issued, 6);
	CHECK_EQ(r.loaded_bytes, 6 * CS);
	CHECK_EQ(replay_policy(&t, APB_EVICT_LRU, 16 * CS, false, &r), 0);
	CHECK_EQ(r.hits, 0);
	CHECK_EQ(r.misses, 5);
	CHECK_EQ(r.prefetch_issued, 0);
	trace_close(&t);
}

static void test_corrupt_traces_are_named(void)
{
	uint64_t size = 4 * CS;
	struct build b, bad;
	char warn[512];
	struct trace t;

	build_start(&b, &size, 1);
	demand(&b, 0, 0);
	demand(&b, 0, 1);
	refused(&b, 10, "shorter than the 64-byte trace header");
	refused(&b, b.len - 1, "truncated: the header says 2 records");
	refused(&b, b.len - 16, "truncated: the header says 2 records");
	bad = b;
	bad.buf[0] = 'X';
	refused(&bad, bad.len, "bad magic");
	bad = b;
	apb_trace_put_u32(bad.buf + APB_TRACE_OFF_VERSION, 9);
	refused(&bad, bad.len, "unsupported trace version 9");
	bad = b;
	apb_trace_put_u32(bad.buf + APB_TRACE_OFF_CHUNK_SIZE, 1000);
	refused(&bad, bad.len, "chunk size 1000");
	bad = b;
	apb_trace_put_u32(bad.buf + APB_TRACE_OFF_FLAGS, 0x80);
	refused(&bad, bad.len, "unknown flags 0x00000080");
	bad = b;
	demand(&bad, 0, 4);
	refused(&bad, bad.len, "record 2: chunk 4 of model 0 is past its end "
		"(4 chunks)");
	bad = b;
	demand(&bad, 3, 0);
	refused(&bad, bad.len, "record 2: model 3 is not below the model "
		"count 1");
	bad = b;
	add(&bad, APB_TRACE_KIND_DEMAND, 0, 0, 2);
	refused(&bad, bad.len, "record 2: a demand record with count 2");
	bad = b;
	bad.time = 0;
	demand(&bad, 0, 0);
	refused(&bad, bad.len, "record 2: time 0 ns is before the previous "
		"record's 1000 ns");
	bad = b;
	bad.len += 16; /* a record the header does not count */
	refused(&bad, bad.len, "16 bytes after the last of the 2 records");
	bad = b;
	bad.len += 5; /* part of one: still more than the header counts */
	refused(&bad, bad.len, "5 bytes after the last of the 2 records");

	/* Never finalized (the daemon was killed): the whole records are
	 * read, a torn last one is not, and a warning says so. */
	bad = b;
	apb_trace_put_u32(bad.buf + APB_TRACE_OFF_FLAGS, 0);
	apb_trace_put_u64(bad.buf + APB_TRACE_OFF_RECORDS, 0);
	bad.len -= 5;
	open_ok(&bad, &t, warn);
	CHECK_EQ(t.records, 1);
	CHECK_STR_CONTAINS(warn, "never finalized");
	trace_close(&t);
}

/* A0 with 3 slots keeps 2 chunks: 7 (3 demands), then of the three with
 * 2 demands the one demanded first, 5 - not 1 (the smallest key) nor 4.
 * 4 and 1 share the third slot: each hits once, when it follows itself
 * there. Worked out by hand: 5 hits; kept {7, 1} would give 3. */
static void test_a0_ranks_by_count_then_first_demand(void)
{
	static const uint64_t seq[] = {5, 4, 7, 7, 5, 4, 1, 7, 1};
	uint64_t size = 7 * CS + 100; /* chunk 7 is 100 bytes */
	struct replay_result r;
	struct build b;
	struct trace t;

	build_start(&b, &size, 1);
	for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
		demand(&b, 0, seq[i]);
		/* Ignored, as by OPT: A0 sees the demand records only. */
		if (i == 2)
			add(&b, APB_TRACE_KIND_PREFETCH, 0, 0, 4);
	}
	open_ok(&b, &t, NULL);
	CHECK_EQ(replay_a0(&t, 3 * CS, &r), 0);
	CHECK_EQ(r.demand, 9);
	CHECK_EQ(r.hits, 5);
	CHECK_EQ(r.reuse_hits, 5);
	CHECK_EQ(r.misses, 4); /* 5 4 7 1, each once */
	CHECK_EQ(r.loaded_bytes, 3 * CS + 100);
	CHECK_EQ(r.served_bytes, 6 * CS + 3 * 100);
	CHECK_EQ(r.prefetch_issued, 0);
	trace_close(&t);
}

/* The transient slot: with 1 slot nothing is kept and a chunk hits only
 * right after itself; with as many slots as chunks the last ranked one
 * is still transient; with one more, only the cold misses are left. */
static void test_a0_transient_slot(void)
{
	static const uint64_t seq[] = {0, 0, 1, 1, 1, 0};
	static const uint64_t loop[] = {0, 1, 2, 0, 1, 2, 0, 1, 2};
	struct replay_result r;
	struct trace t;

	OPEN_DEMANDS(&t, 4 * CS, seq);
	CHECK_EQ(replay_a0(&t, CS, &r), 0);
	CHECK_EQ(r.hits, 3);
	CHECK_EQ(r.misses, 3);
	CHECK_EQ(r.loaded_bytes, 3 * CS);
	CHECK_EQ(replay_a0(&t, 2 * CS - 1, &r), 0); /* rounds down: 1 slot */
	CHECK_EQ(r.hits, 3);
	/* 2 slots: 1 (3 demands) is kept, 0 alone in the transient slot. */
	CHECK_EQ(replay_a0(&t, 2 * CS, &r), 0);
	CHECK_EQ(r.hits, 4);
	CHECK_EQ(r.misses, 2);
	CHECK_EQ(replay_a0(&t, CS - 1, &r), -EINVAL);
	trace_close(&t);

	/* A loop over 3 chunks, 3 passes: every chunk has 3 demands, so the
	 * first demanded are kept. */
	OPEN_DEMANDS(&t, 4 * CS, loop);
	/* 0 kept; 1 and 2 take turns in the transient slot: never a hit. */
	CHECK_EQ(replay_a0(&t, 2 * CS, &r), 0);
	CHECK_EQ(r.hits, 2);
	/* 0 and 1 kept, 2 alone in the transient slot: it hits too. */
	CHECK_EQ(replay_a0(&t, 3 * CS, &r), 0);
	CHECK_EQ(r.hits, 6);
	CHECK_EQ(r.misses, 3);
	CHECK_EQ(replay_a0(&t, 4 * CS, &r), 0);
	CHECK_EQ(r.hits, 6);
	trace_close(&t);
}

/* Random inserts and removes against a plain array: backward-shift
 * deletion must never lose a key. */
static void test_keymap_matches_an_array(void)
{
	enum { KEYS = 512 };
	uint64_t value[KEYS];
	bool present[KEYS] = {false};
	struct keymap *m;
	uint64_t seed = 1, count = 0;

	CHECK_EQ(keymap_new(KEYS, &m), 0);
	for (int step = 0; step < 200000; step++) {
		uint64_t k;

		seed = seed * 6364136223846793005u + 1442695040888963407u;
		k = (seed >> 33) % KEYS;
		if ((seed >> 20) & 1) {
			keymap_put(m, k * 4096 + 7, (uint64_t)step);
			count += !present[k];
			present[k] = true;
			value[k] = (uint64_t)step;
		} else {
			keymap_remove(m, k * 4096 + 7);
			count -= present[k];
			present[k] = false;
		}
		CHECK_EQ(keymap_count(m), count);
	}
	for (uint64_t k = 0; k < KEYS; k++) {
		uint64_t v = 0;

		CHECK_EQ(keymap_get(m, k * 4096 + 7, &v), present[k]);
		if (present[k])
			CHECK_EQ(v, value[k]);
	}
	keymap_free(m);
}

int main(void)
{
	RUN(test_loop_lru_no_hits_opt_exact);
	RUN(test_textbook_reference_string);
	RUN(test_bytes_follow_chunk_lengths);
	RUN(test_prefetch_records);
	RUN(test_a0_ranks_by_count_then_first_demand);
	RUN(test_a0_transient_slot);
	RUN(test_corrupt_traces_are_named);
	RUN(test_keymap_matches_an_array);
	return 0;
}
