/*
 * prefetch.h - sequential-read detection and the background loader that
 * reads ahead of it.
 *
 * struct apb_readahead follows the reads of one open file in a few streams
 * (mmap users and multi-threaded loaders interleave several sequential
 * readers on one file). A read that starts within a small gap of where a
 * stream ended continues that stream: its window, starting at the size of
 * the read that began the stream, doubles up to the limit; any other read
 * starts a new stream in place of the least recently used one, with no
 * readahead - except a read at offset 0, which begins a sequential stream
 * at once (a program reading a model from its start is loading it; a
 * probe of the first few KiB costs one extra chunk). For each read it says
 * which chunks to prefetch next; it never names a chunk twice for a stream
 * whose reads keep pace. apb_readahead_new() returns -EINVAL for a
 * chunk_size of 0.
 *
 * struct apb_prefetcher is a small pool of worker threads, at the lowest
 * best-effort I/O priority, that take chunk ranges from a bounded queue
 * and load them with apb_cache_prefetch_run(). A range of any size is one
 * entry of the queue; workers split it into jobs of
 * apb_prefetch_job_chunks() chunks as they take them, a job at a time
 * from each queued range in turn, so one large range (a whole model) is
 * loaded by every worker at once. A full queue drops the request
 * (prefetch is advice). A range may carry a tag, and cancelling the tag
 * drops what is still queued of its ranges (a learned load order that
 * the reader left). It backs off when prefetched chunks are being
 * evicted unread: the window limit it reports shrinks while waste is high
 * and grows back when it is not.
 *
 * Thread safety: an apb_readahead may be used by several threads at once
 * (one open file read by many); the prefetcher's functions may be called
 * from any thread.
 */
#ifndef APBUNDLE_PREFETCH_H
#define APBUNDLE_PREFETCH_H

#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "cache.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_READAHEAD_STREAMS 4

struct apb_readahead;
struct apb_prefetcher;

struct apb_ra_stats {
	uint64_t sequential; /* reads that continued a stream */
	uint64_t random;     /* reads that continued no stream (not at 0) */
};

/* chunk_size as the cache's. Returns 0 or -ENOMEM. */
APB_API
int apb_readahead_new(uint32_t chunk_size, struct apb_readahead **out);
APB_API
void apb_readahead_free(struct apb_readahead *ra);

/*
 * Note a read of [off, off + len) of a model of model_size bytes. Sets
 * *first and *count to the chunks to prefetch now (*count 0 for none),
 * keeping at most window_limit_bytes (rounded down to chunks, at least
 * one) ahead of the read. Counts the read as sequential or random and
 * returns true if it was sequential. A read at offset 0 starts a
 * sequential stream; readahead.c explains the rules.
 */
APB_API
bool apb_readahead_note(struct apb_readahead *ra, uint64_t off, uint64_t len,
			uint64_t model_size, uint64_t window_limit_bytes,
			uint64_t *first, uint32_t *count);
APB_API
void apb_readahead_stats(struct apb_readahead *ra, struct apb_ra_stats *out);

/* Hand out prefetch in batches of at least chunks (but at most half the
 * stream's window, and less at a model's end): a continuation that would
 * hand out fewer hands out nothing and leaves them for a later read, so
 * that a source that pays a round trip per request gets few large ones.
 * 0 or 1 (the default): every read hands out what it is due. */
APB_API
void apb_readahead_set_batch(struct apb_readahead *ra, uint32_t chunks);

/* threads >= 1; chunk_size as the cache's. Returns 0, -EINVAL, -ENOMEM,
 * or a pthread_create errno. */
APB_API
int apb_prefetcher_new(struct apb_cache *cache, unsigned threads,
		       uint32_t chunk_size, struct apb_prefetcher **out);

/* Chunks per job for chunk_size: 1 MiB of them, at least 1 and at most
 * APB_CACHE_RUN_MAX (one load each). A prefetcher on a cache whose run
 * limit was raised (apb_cache_run_max() > APB_CACHE_RUN_MAX) takes jobs
 * of that limit instead. */
APB_API
uint32_t apb_prefetch_job_chunks(uint32_t chunk_size);
/* Stops the workers (abandoning queued work) and joins them; a worker in
 * the middle of a load finishes that load first. */
APB_API
void apb_prefetcher_free(struct apb_prefetcher *p);

/* Queue chunks [first, first + count) of model as one range. 0, or
 * -EAGAIN when the queue is full (nothing queued). A job that fails (the
 * cache's prefetch share is full, a load error) drops what is left of its
 * range. */
APB_API
int apb_prefetcher_submit(struct apb_prefetcher *p, uint32_t model,
			  uint64_t first, uint32_t count);

/* As apb_prefetcher_submit(), with a tag (not 0) that
 * apb_prefetcher_cancel() can name; the jobs split from the range keep it. */
APB_API
int apb_prefetcher_submit_tagged(struct apb_prefetcher *p, uint32_t model,
				 uint64_t first, uint32_t count, uint64_t tag);

/* Drop every queued range (and what is left of one) submitted with tag;
 * a worker in the middle of a job of it finishes that job. Returns the
 * chunks dropped. Tag 0 drops nothing. */
APB_API
uint64_t apb_prefetcher_cancel(struct apb_prefetcher *p, uint64_t tag);

/* The readahead window to allow now: max_bytes, reduced while recent
 * prefetches are being wasted; never below 1 byte (readahead rounds it up
 * to one chunk). */
APB_API
uint64_t apb_prefetcher_window(struct apb_prefetcher *p, uint64_t max_bytes);

/* Wait until the queue is empty and no worker is loading (for tests and
 * orderly shutdown). */
APB_API
void apb_prefetcher_drain(struct apb_prefetcher *p);

#ifdef __cplusplus
}
#endif

#endif
