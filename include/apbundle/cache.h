/*
 * cache.h - a memory-budgeted cache of fixed-size chunks of model data.
 *
 * A chunk is bytes [index * chunk_size, (index + 1) * chunk_size) of one
 * model's uncompressed data, keyed by (model, index). The cache knows nothing
 * of files or FUSE: it calls the configured loader to fill a chunk on a miss.
 *
 * Guarantees:
 *  - Memory: every resident or in-flight chunk occupies one slot of
 *    chunk_size bytes; at most budget_bytes / chunk_size slots exist, so
 *    chunk memory never exceeds the budget. Slots are carved from one
 *    reserved region; freed slots are returned to the OS (MADV_DONTNEED)
 *    by apb_cache_clear() and apb_cache_evict_model().
 *  - Single flight: concurrent misses on one chunk call the loader once;
 *    the other callers wait for it.
 *  - References: apb_cache_get() returns a referenced chunk; its bytes stay
 *    valid and unchanged until apb_cache_put(). Referenced chunks are never
 *    evicted.
 *  - When every slot is referenced or loading, apb_cache_get() waits for a
 *    slot. A caller must therefore hold no other reference while it calls
 *    apb_cache_get(), or it may wait forever; apb_cache_tryget() is for
 *    callers that do.
 *  - Cost per access: O(1) for LRU, O(log n) for LFU (a heap).
 *
 * Thread safety: every function may be called from any thread, except
 * apb_cache_free(), which must be called once no other call is running and
 * no reference is held.
 */
#ifndef APBUNDLE_CACHE_H
#define APBUNDLE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

enum apb_eviction {
	APB_EVICT_LRU = 0,
	APB_EVICT_LFU = 1, /* LFU with dynamic aging (see evict.c) */
	APB_EVICT_AUTO = 2, /* loop-aware: keeps part of a cyclic scan (evict.c) */
};
#define APB_EVICT_COUNT 3

/* "lru", "lfu", "auto"; NULL for a value outside the enum. */
APB_API
const char *apb_eviction_name(enum apb_eviction policy);
/* The policy named name; 0, or -EINVAL for an unknown name. */
APB_API
int apb_eviction_parse(const char *name, enum apb_eviction *out);

/* What a traced cache access was (struct apb_cache_config.trace). */
enum apb_cache_access {
	APB_ACCESS_DEMAND = 0,   /* a get: a reader (or a pin) wants the chunk */
	APB_ACCESS_PREFETCH = 1, /* a prefetch run asked for, loaded or not */
};

/*
 * Called at the end of every apb_cache_get*() that counted a hit or a miss
 * (kind DEMAND, count 1; a tryget refused with -EAGAIN counts nothing and
 * is not traced) and at the start of every apb_cache_prefetch_run() (kind
 * PREFETCH, count as asked but at most the cache's run limit,
 * struct apb_cache_config.run_max), with no cache
 * lock held, from any thread.
 * For recording traces to replay; NULL (the default) costs one branch.
 */
typedef void (*apb_cache_trace_fn)(void *ctx, uint32_t model, uint64_t index,
				   uint32_t count, enum apb_cache_access kind);

/*
 * Fill n consecutive chunks first, first + 1, ... of model, chunk first + i
 * into bufs[i] (cap bytes each, cap == chunk_size), ideally with one read,
 * and set lens[i] to its valid bytes (<= cap; less only for a model's last
 * chunk, 0 for a chunk past its end). Returns 0, or a negative errno that
 * fails every chunk of the run. 1 <= n <= the cache's run limit
 * (struct apb_cache_config.run_max, APB_CACHE_RUN_MAX unless set; never
 * over APB_CACHE_RUN_LIMIT): every load is
 * a run (a prefetch run, a get's miss and the chunks after it, a miss
 * alone). Called with no cache lock held, possibly from several threads at
 * once for different chunks.
 */
typedef long (*apb_cache_load_fn)(void *ctx, uint32_t model, uint64_t first,
				  void *const *bufs, size_t n, size_t cap,
				  size_t *lens);

/* Most chunks one apb_cache_prefetch_run() call loads, unless the config's
 * run_max says otherwise: a local file's default. */
#define APB_CACHE_RUN_MAX 16u
/* The largest run_max a cache takes: 4 MiB of the default 64 KiB chunks (a
 * remote source's requests; fs/main.c). Within a trace record's 7-bit
 * count (trace.h), so a traced prefetch run is recorded whole. */
#define APB_CACHE_RUN_LIMIT 64u

/* Most slots (budget_bytes / chunk_size) a cache may have: 2 * nslots hash
 * buckets must fit in a uint32_t. */
#define APB_CACHE_MAX_SLOTS (1u << 30)

struct apb_cache_config {
	uint64_t budget_bytes;    /* >= chunk_size */
	/* Most slots that prefetched chunks not yet read may hold, in percent
	 * of all slots (at least one slot); 0 means the default (50), over 100
	 * is -EINVAL. */
	uint32_t prefetch_share_pct;
	uint32_t chunk_size;      /* multiple of 4096, >= 4096 */
	enum apb_eviction policy;
	uint32_t model_count;     /* models are 0 .. model_count - 1 */
	apb_cache_load_fn load;   /* called with load_ctx */
	void *load_ctx;
	apb_cache_trace_fn trace; /* optional, called with trace_ctx */
	void *trace_ctx;
	/* Ask for transparent huge pages for the slots: for a loader that
	 * reads or writes the slots' bytes in user space, where each fresh
	 * 4 KiB page costs a fault; not for one that only has the kernel fill
	 * them (O_DIRECT), where huge pages' zeroing and compaction cost more
	 * than they save (cache.c, MEMORY). */
	bool huge_pages;
	/* Most chunks one load reads (a prefetch run, a miss and the chunks
	 * after it): 0 means APB_CACHE_RUN_MAX, over APB_CACHE_RUN_LIMIT is
	 * -EINVAL. A source with a high cost per read (a URL) takes larger
	 * runs, so that a round trip is paid per run. */
	uint32_t run_max;
};

struct apb_cache_stats {
	uint64_t budget_bytes;    /* slots * chunk_size */
	uint64_t used_bytes;      /* slots resident or loading * chunk_size */
	uint64_t resident_chunks; /* loaded chunks (not counting in-flight) */
	uint64_t hits;            /* gets that found the chunk resident or
				   * being loaded by a prefetch */
	uint64_t reuse_hits;      /* of those, gets of a chunk that an earlier
				   * get had already returned: the reads the
				   * cache saved (a first read of a prefetched
				   * chunk is a hit, not a reuse) */
	uint64_t misses;          /* gets that loaded, or waited for another
				   * get's load */
	uint64_t evictions;       /* chunks dropped, for room or on request */
	uint64_t loaded_bytes;    /* bytes returned by successful loads */
	uint64_t load_errors;     /* loads that failed */
	uint64_t prefetch_issued;       /* chunks loaded by prefetch (runs) */
	uint64_t prefetch_issued_bytes;
	uint64_t prefetch_hits;         /* of those, first read by a get */
	uint64_t prefetch_hits_bytes;
	uint64_t prefetch_wasted;       /* of those, dropped before any get */
	uint64_t prefetch_wasted_bytes;
	uint64_t prefetch_unused_chunks; /* state: prefetched, not yet read */
	uint64_t pinned_bytes;    /* state: valid bytes of pinned chunks */
	uint64_t pinnable_bytes;  /* limit: chunk bytes a new pin may still
				   * take (see apb_cache_pin_model) */
	uint64_t prefetch_share_bytes; /* limit: chunk bytes prefetched chunks
					* not yet read may hold */
};

struct apb_cache_model_stats {
	uint64_t resident_bytes;  /* valid bytes of this model's loaded chunks */
	uint64_t hits;
	uint64_t reuse_hits;
	uint64_t misses;
	uint64_t evictions;
	uint64_t prefetch_issued;
	uint64_t prefetch_hits;
	uint64_t prefetch_wasted;
};

struct apb_cache;
struct apb_chunk;

/* Returns 0, -EINVAL for a bad config, or -ENOMEM. */
APB_API
int apb_cache_new(const struct apb_cache_config *cfg, struct apb_cache **out);
APB_API
void apb_cache_free(struct apb_cache *c);

/*
 * Get chunk index of model, loading it on a miss. Counts one hit or one
 * miss. On success returns 0 and a referenced chunk in *out; on a failed
 * load returns the loader's negative errno (for every waiter of that load)
 * and caches nothing, so a later get tries again. A loader that returns
 * more than cap bytes fails the load with -EIO. model >= model_count gives
 * -EINVAL and counts nothing.
 */
APB_API
int apb_cache_get(struct apb_cache *c, uint32_t model, uint64_t index,
		  struct apb_chunk **out);
/*
 * As apb_cache_get(), for a caller that already holds references: where
 * apb_cache_get() would wait for a slot (every slot referenced or loading),
 * returns -EAGAIN and counts nothing. It does wait for another thread's
 * load of the same chunk, which needs no slot and always finishes.
 */
APB_API
int apb_cache_tryget(struct apb_cache *c, uint32_t model, uint64_t index,
		     struct apb_chunk **out);
/*
 * As apb_cache_get() (may_wait) or apb_cache_tryget() (!may_wait), for a
 * reader that will get chunks index + 1 .. index + ahead next: a miss loads
 * those of them that are absent and get a slot without waiting, up to the
 * first that is present or does not, with the same load call (one read of
 * the backing store). Those chunks are not referenced; each counts one miss
 * at its first get.
 */
APB_API
int apb_cache_get_ahead(struct apb_cache *c, uint32_t model, uint64_t index,
			uint32_t ahead, bool may_wait, struct apb_chunk **out);
APB_API
void apb_cache_put(struct apb_cache *c, struct apb_chunk *chunk);

/*
 * Load chunk index of model ahead of demand, in the calling thread, if there
 * is room; never waits for a slot and takes no reference. Returns 0 when the
 * chunk was loaded or is already resident or loading, -EAGAIN when prefetched
 * chunks not yet read already fill their share of the slots, when no slot is
 * free and no chunk that has been read is evictable (a prefetch never evicts
 * another unread prefetch), or when a get is waiting for a slot (demand
 * first); -EINVAL for a bad model, or the loader's errno (nothing cached).
 * Counts no hit or miss; counts prefetch_issued. The chunk enters the
 * eviction order cold: it is the first candidate for eviction until a get
 * reads it, so a prefetch that is never used cannot push out data that is. A
 * get that finds a chunk being loaded by a prefetch counts a hit
 * (docs/USAGE.md, ".stats"); the first get of a prefetched chunk counts
 * prefetch_hits; a prefetched chunk evicted before any get counts
 * prefetch_wasted.
 */
APB_API
int apb_cache_prefetch(struct apb_cache *c, uint32_t model, uint64_t index);

/*
 * Prefetch a run of adjacent chunks with one load: as apb_cache_prefetch()
 * for each of first, first + 1, ... in order, but for the longest prefix
 * of [first, first + min(count, run_max)) whose chunks are all
 * absent and all get a slot under the prefetch rules; the run stops before
 * the first chunk that is present (any state) or gets no slot. The run is
 * loaded with one call of the load function and each chunk then counts,
 * and is seen by waiting gets, exactly as a single prefetch. Returns 0 with *loaded = the chunks taken
 * (0 when chunk first is present: the caller moves on past it), -EAGAIN
 * (*loaded = 0) when chunk first is absent and gets no slot, -EINVAL for a
 * bad model, or the load's errno (*loaded = the chunks taken; none of
 * them is cached). A failed load call counts one load error, however many
 * chunks it fails.
 */
APB_API
int apb_cache_prefetch_run(struct apb_cache *c, uint32_t model, uint64_t first,
			   uint32_t count, uint32_t *loaded);

/* Valid bytes of a referenced chunk. */
APB_API
const void *apb_chunk_data(const struct apb_chunk *chunk);
APB_API
size_t apb_chunk_len(const struct apb_chunk *chunk);

/*
 * Pin model: load every chunk of it (in the calling thread, one get at a
 * time, counting hits and misses as reads would) and keep them out of
 * eviction until apb_cache_unpin_model(). Pinned chunks count against the
 * budget; a prefetched chunk the pin takes over counts a prefetch hit.
 * Returns 0 (also when already pinned or being pinned by another call, and
 * always for an empty model), -ENOSPC when the model's
 * chunks plus those already pinned would leave fewer than
 * APB_CACHE_UNPINNED_MIN(nslots) slots for everything else (nothing is
 * pinned then), -EINVAL for a bad model, or a loader errno (the pin is
 * undone). model_size is the model's size in bytes.
 */
APB_API
int apb_cache_pin_model(struct apb_cache *c, uint32_t model,
			uint64_t model_size);
/* Make the model's chunks evictable again; 0, or -EINVAL if not pinned. */
APB_API
int apb_cache_unpin_model(struct apb_cache *c, uint32_t model);
APB_API
bool apb_cache_model_pinned(struct apb_cache *c, uint32_t model);

/* Slots that pins must leave free for reads of everything else: an eighth
 * of the budget and at least 16 slots, so that readers never wait on a
 * cache filled with pinned chunks. */
#define APB_CACHE_UNPINNED_MIN(nslots) \
	((nslots) / 8 > 16 ? (nslots) / 8 : 16)

/* Drop every loaded chunk of model (or of all models) and give the memory
 * back to the OS. A chunk that a reader still holds leaves the cache at once
 * (counted as evicted; the next get loads it afresh) and its memory goes
 * back when the last reference is put. Chunks still loading stay, and so
 * do the chunks of a pinned model. */
APB_API
void apb_cache_evict_model(struct apb_cache *c, uint32_t model);
APB_API
void apb_cache_clear(struct apb_cache *c);

/* Zero every counter, global and per model (prefetch counters included);
 * state stays: memory, resident chunks and bytes, prefetch_unused_chunks,
 * pinned_bytes. */
APB_API
void apb_cache_reset_stats(struct apb_cache *c);

APB_API
void apb_cache_stats(struct apb_cache *c, struct apb_cache_stats *out);

/* Most chunks one load reads: the config's run_max, or APB_CACHE_RUN_MAX. */
APB_API
uint32_t apb_cache_run_max(const struct apb_cache *c);
/* All zero for a model >= model_count. */
APB_API
void apb_cache_model_stats(struct apb_cache *c, uint32_t model,
			   struct apb_cache_model_stats *out);

#ifdef __cplusplus
}
#endif

#endif
