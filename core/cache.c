/*
 * cache.c - the chunk cache: a fixed pool of chunk-sized slots, a hash table
 * from (model, index) to the chunk a slot holds, the chunk states, waiting
 * and counters. The eviction policies are in evict.c.
 *
 * MEMORY
 *
 * apb_cache_new() reserves one region of nslots * chunk_size bytes, where
 * nslots = budget_bytes / chunk_size, with an anonymous MAP_NORESERVE
 * mapping: nothing is resident until a loader writes into a slot. A chunk
 * that is loaded, being loaded, or referenced owns exactly one slot, so chunk
 * memory cannot exceed the budget by construction; there is no accounting to
 * get wrong. Eviction for room hands the victim's slot straight to the new
 * chunk (no munmap, no madvise: the pages are about to be overwritten).
 * apb_cache_clear() and apb_cache_evict_model() instead return the freed
 * slots' pages to the OS with madvise(MADV_DONTNEED), so the resident set
 * really falls (README.md, "Memory"); the next loader into such a slot faults
 * in fresh zero pages.
 *
 * With huge_pages the region starts on a 2 MiB boundary and is marked
 * MADV_HUGEPAGE, so fresh slots come in transparent huge pages where the
 * system allows them (THP "always" or "madvise"). Every load into a cleared
 * cache gets fresh pages, and the first user-space touch of a fresh 4 KiB
 * page is what made version 2 loads slow (the checksum reads the slot,
 * zstd writes it): on the development VM about 5 us per page, 1.35 s per
 * GiB, against one fault per 2 MiB. Where only the kernel writes the slots
 * (version 1, O_DIRECT) there is no such touch to save, and the zeroing
 * and compaction of huge pages made some loads slower: the daemon asks
 * for them for version 2 bundles only (docs/PERFORMANCE.md, "Huge pages
 * for version 2"). A huge page lies wholly inside the region, so the
 * resident set still cannot exceed it; MADV_DONTNEED of part of one
 * splits it and frees that part.
 *
 * Prefetched chunks are ordinary chunks in ordinary slots, so they are
 * inside the budget too; the prefetch share (PREFETCH below) only limits how
 * many of the slots they may hold.
 *
 * Outside the budget, the cache's own memory is reserved at creation and
 * paid for as slots are used: per slot one struct apb_chunk (128 bytes on
 * LP64), 2 to 4 bucket pointers, a 4-byte free-stack entry and, for LFU, an
 * 8-byte heap entry or, for auto, half a 64-byte ghost and 1 to 2 ghost
 * bucket pointers (at most 212 bytes, 0.32% of a 64 KiB chunk); per model
 * one struct apb_cache_model_stats (64 bytes) and one struct model_pin (24
 * bytes). The per-slot tables are zeroed mappings that nothing writes
 * before a slot is first used (a slot's metadata is set up then, and the
 * ghosts are handed out the same way), so their pages come as the cache
 * fills: max_memory=64G,chunk_size=4K (16 Mi slots) took 2.6 GiB of RSS
 * and 4 s at mount when every slot was set up front, 2.6 MiB and 0.05 s
 * now; a full cache still pays the 212 bytes a slot.
 *
 * STRUCTURES
 *
 * The metadata is a fixed array parallel to the slots: chunks[i] describes
 * slot i and chunks[i].data points at it. Nothing is allocated after
 * apb_cache_new(), so the read path never calls malloc. Every slot's
 * metadata is in exactly one of these states:
 *
 *   FREE     its slot is on the free stack (free_slots[0 .. nfree)).
 *   LOADING  in the hash table; one thread (a get or a prefetch) runs the
 *            loader into the slot with the lock dropped. refs >= 1 (the
 *            loader's own reference plus one per waiting get).
 *   READY    in the hash table; data[0 .. len) are the chunk's bytes.
 *            With refs == 0 and not pinned (PINNING) it is also in the
 *            evictable set, and only then.
 *   FAILED   the load failed: out of the table (so the next get loads
 *            again), load_error holds the errno for the waiters. The last
 *            waiter to leave returns the slot to the free stack.
 *   RECLAIM  taken by one apb_cache_clear()/apb_cache_evict_model() call
 *            or by the last put of a DETACHED chunk, which owns it
 *            exclusively (it is on no shared structure) while it madvises
 *            the slot with the lock dropped; then FREE.
 *   DETACHED a READY chunk that clear/evict_model dropped while readers
 *            held it: out of the table and the residency counters (its
 *            eviction already counted), bytes still valid for the holders.
 *            The last put reclaims the slot. refs >= 1.
 *
 * Across the states runs one flag, prefetched: "loaded ahead of demand, not
 * yet read". A prefetch sets it when it takes the slot; whenever mu is free
 * it is set only on a LOADING chunk (being loaded by that prefetch) or on a
 * READY chunk with refs == 0 (a get that references a READY chunk clears it
 * at once, and so does a prefetch whose load gets waited for). It is
 * cleared by the first get that returns the chunk (a prefetch hit), by the
 * chunk leaving the table while READY (a wasted prefetch: chunk_forget(),
 * whatever the reason) or by the load failing (neither). The number of
 * chunks with the flag is st.prefetch_unused_chunks.
 *
 * The hash table chains through hash_next; its bucket array is a power of
 * two >= 2 * nslots fixed at creation. At most nslots chunks are ever in it,
 * so the load factor stays <= 1/2 and it never resizes.
 *
 * EVICTION
 *
 * The READY chunks with refs == 0 that are not pinned (PINNING), and only
 * they, are in the evictable set
 * (c->evictable), the one structure evict.c keeps; its top comment explains
 * the policies (LRU, LFU-DA), why LFU-DA, and the invariant on L. The set
 * reaches a chunk through the struct apb_evict_node embedded in it, and a
 * victim's node leads back to its chunk by offsetof (chunk_of()). Here,
 * evict_insert(), evict_remove() and evict_pop_victim() wrap the set to
 * assert the chunk states and to wake slot waiters.
 *
 * A chunk enters the set cold exactly when it has the prefetched flag (a
 * prefetch's load finished and no get waited for it): evict_insert() sees
 * the flag. Cold chunks are the first victims of a get that needs room
 * (under auto, after the chunks its Q holds), so an unread prefetch never
 * outlives a used chunk the policy keeps; a prefetch that needs
 * room takes only a warm (read) victim, so prefetches never evict each
 * other. evict.c explains both under COLD CHUNKS. Once a get reads the
 * chunk it leaves the set and its put inserts it warm like any other.
 *
 * WAITING
 *
 * Single flight: a get that misses takes a slot, enters the chunk LOADING
 * with refs = 1, drops the lock, calls the loader, retakes the lock and
 * marks the chunk READY or FAILED; then it broadcasts load_cv if refs > 1.
 * A get that finds the chunk LOADING takes a reference (so the metadata
 * stays put even if the load fails, and so the loader can tell it has
 * waiters) and waits on load_cv until the state changes. One load_cv
 * serves all loads: waiters re-check their own chunk's state.
 *
 * When no slot is free and the evictable set is empty (every slot referenced
 * or loading), a get waits on slot_cv, then looks the chunk up again (another
 * thread may have loaded it meanwhile). slot_cv is broadcast whenever a chunk
 * becomes evictable or a slot becomes free, but only while slot_waiters > 0.
 * Broadcast rather than signal: a woken waiter may find its chunk already
 * loaded and not take the slot, and a lost wake-up would strand the others.
 * A loader never needs a slot and waiters never hold the lock, so loads
 * always finish; a caller holding another reference while it gets can wait
 * forever (cache.h says so).
 *
 * PINNING
 *
 * apb_cache_pin_model() keeps a model's chunks out of eviction. Per model a
 * struct model_pin says whether it is pinned and over how many chunks
 * (nchunks = ceil(model_size / chunk_size), fixed by the pin); a chunk is
 * pinned iff its model is pinned and index < nchunks (chunk_pinned()). A
 * pinned READY chunk with refs == 0 is on no eviction list: chunk_unref()
 * leaves it out of the set, chunk_ref() has nothing to remove, so it is
 * never a victim of a get or a prefetch, and clear/evict_model skip it
 * (apb_cache_evict_model() of a pinned model drops only chunks past its
 * pinned range, which a well-behaved reader never loads).
 *
 * Reservation. c->pinned_slots is the sum of nchunks over pinned models:
 * the slots reserved, not those held (a pin still loading holds fewer), so
 * the bound holds while pins load too. A pin is refused with -ENOSPC unless
 * pinned_slots + nchunks + APB_CACHE_UNPINNED_MIN <= nslots, and pinned
 * chunks never exceed pinned_slots, so at least APB_CACHE_UNPINNED_MIN
 * slots never hold a pinned chunk at any time: a get that waits for a slot
 * waits only for unpinned chunks to be put, as before. An empty model
 * reserves nothing and is always pinned.
 *
 * Pin, under mu: check the room, mark the model pinned, reserve, and take
 * its already resident READY chunks off the evictable set (pin_begin()).
 * Then, without mu, apb_cache_get() and apb_cache_put() each chunk in turn
 * (a hit or a miss each, as a reader's); the puts leave them off the set.
 * If a load fails, the pin is undone under mu (pin_end(), as an unpin) and
 * the loader's errno returned. Unpin (pin_end()): clear the flag, insert
 * every READY refs-0 chunk of the range into the set warm (each was read by
 * the pin, so LFU has F >= 1), give the reservation back. A pin of a model
 * already pinned returns 0 at once, even while another call is still
 * loading it; a pin that fails undoes only its own pin (model_pin.epoch),
 * not a later one that an unpin and a new pin put in its place.
 *
 * Prefetched chunks of a pinned model. An unread prefetched chunk that a
 * pin takes off the set, or a prefetch of a pinned chunk that finishes with
 * no waiter, is read by the pin: pin_adopt() counts it a prefetch hit and
 * clears the flag (a pin's later get of it is then an ordinary hit). So a
 * pinned READY chunk with refs == 0 never has the flag, and the cold list
 * holds no pinned chunk.
 *
 * PREFETCH
 *
 * apb_cache_prefetch() is a get that never waits and keeps no reference.
 * Under mu: a chunk already in the table (any state) means nothing to do.
 * Otherwise it needs a slot, and refuses (-EAGAIN) rather than wait for one:
 * when prefetch_unused_chunks has reached the share (prefetch_share,
 * prefetch_share_pct of nslots, at least 1), when a get is waiting for a slot
 * (demand comes first: the slot that woke it is the get's), or when
 * slot_take() finds neither a free slot nor a warm victim. Then it marks the
 * chunk prefetched and enters it LOADING (chunk_load_begin()) exactly as a
 * get does, so single flight holds: a get that finds the chunk LOADING waits
 * on it (and counts a hit, docs/USAGE.md ".stats": the chunk is "being loaded
 * by a prefetch"). When the load succeeds the prefetch drops the loader's
 * reference; with no waiter the chunk is READY, refs 0, and enters the set
 * cold. With waiters, their gets will return the chunk whatever happens next
 * (READY or, after a clear, DETACHED), so the prefetch counts the first of
 * them as the prefetch hit right there and clears the flag; the waiters' puts
 * insert it warm. Checking the share before slot_take() is exact: a
 * prefetch's slot_take() never evicts a prefetched chunk, so the count cannot
 * change in between. The share is therefore never exceeded:
 * prefetch_unused_chunks <= prefetch_share at every unlock.
 *
 * Runs. apb_cache_prefetch_run() is the same for up to run_max (the
 * config's, APB_CACHE_RUN_MAX by default, at most APB_CACHE_RUN_LIMIT)
 * adjacent chunks, so that a store with high latency per read moves a run
 * per round trip, not a chunk: under mu it applies the rules above chunk
 * by chunk (prefetch_take()), stopping at the first chunk present or
 * refused, and enters each chunk it took LOADING and prefetched; it drops
 * mu once and loads them all with one call of the loader (the slots are
 * scattered, so the loader reads into one buffer per slot, e.g. preadv);
 * it retakes mu and finishes each chunk as a single prefetch does
 * (chunk_load_end(), prefetch_loaded()), waking its waiters. A failed run
 * fails every chunk of it and counts one load error. A get that finds a
 * chunk of a run LOADING waits for the whole run's load: the price of one
 * read for all. apb_cache_prefetch() is a run of one. The share argument
 * holds per chunk: each prefetch_mark() checked the share, and no
 * slot_take() in between evicted a prefetched chunk.
 *
 * Runs after a miss. apb_cache_get_ahead() is told how many chunks after
 * the one it gets its caller will get next (the rest of one read). When it
 * misses, it also takes slots for those of them that are absent, as a get
 * would (evicting, but never waiting, and not while a get waits for a
 * slot), up to the first present or refused, and at most an eighth of the
 * slots, enters them LOADING and "ahead", and loads them with its own
 * chunk in one load call: a read
 * of 16 missing chunks is one preadv, not 16 preads one after another.
 * Each ahead chunk counts its miss at its first get (the read's own get,
 * normally an instant later), not a hit: it was not resident when the read
 * came. An ahead chunk that is evicted before any get counts nothing.
 *
 * COUNTERS (the exact meaning of struct apb_cache_stats)
 *
 * A get of a model >= model_count fails with -EINVAL and counts nothing.
 * Every other get counts exactly one hit or one miss, decided at its first
 * lookup: a hit if the chunk was READY or being loaded by a prefetch
 * (docs/USAGE.md, ".stats": the reader did not cause that load, it only waits
 * for it; if the load fails the get fails, still a hit), a miss otherwise -
 * not present, or LOADING for another get (the waiter of an in-flight demand
 * load is a miss too), and it stays a miss if the get then waits for a slot
 * and finds the chunk loaded by someone else meanwhile. A hit is also a reuse
 * hit (reuse_hits) when the chunk was READY and had been returned by an
 * earlier get (it is neither prefetched nor ahead): the reads the cache
 * saved, where a prefetch hit only moved a read earlier. loaded_bytes adds
 * the length each successful load returned. load_errors counts each failed
 * load once, not once per waiter; a loader returning more than chunk_size
 * bytes, or a negative value that is no errno, fails its load with -EIO.
 * evictions counts every READY chunk dropped: for room, by
 * apb_cache_evict_model(), by apb_cache_clear() (pinned chunks are never
 * dropped). pinned_bytes is state: the valid bytes of READY pinned chunks,
 * kept by resident_add() and pin_begin()/pin_end(). resident_chunks and the
 * per-model resident_bytes cover READY chunks only. used_bytes covers every
 * slot that is neither free nor being reclaimed (LOADING, READY, DETACHED,
 * FAILED but still referenced): the memory in use.
 *
 * Prefetch. A prefetch counts no hit or miss. loaded_bytes and load_errors
 * count its loads like a get's (loaded_bytes per chunk; a failed run,
 * one load call, counts one load error); prefetch_issued (+_bytes, the length
 * loaded) counts its successful loads only: a failed one caches nothing
 * and counts nothing else. The flag then decides the rest, each issued
 * chunk exactly once: its first get counts prefetch_hits (+_bytes), besides
 * that get's own hit; its leaving the cache unread - evicted for room, by
 * evict_model or clear - counts prefetch_wasted (+_bytes) besides the
 * eviction. So with no reset in between, issued = hits + wasted +
 * unused_chunks once no prefetch is loading. prefetch_unused_chunks is
 * state (chunks with the flag, LOADING ones included), not a counter.
 * apb_cache_reset_stats() zeroes every counter, global and per model, and
 * keeps the state: resident_chunks, prefetch_unused_chunks, pinned_bytes,
 * resident_bytes.
 *
 * Global and per-model counters are plain fields changed under the mutex,
 * which every path holds anyway; stats readers take it too, so one
 * apb_cache_stats() call is a consistent snapshot.
 *
 * LOCKING
 *
 * One mutex, mu, protects every mutable field of the cache and every field
 * of struct apb_chunk except data, which is immutable, and the slot bytes
 * themselves, which belong to the loader while LOADING and are read-only
 * while READY. There is no lock order because there is one lock. It is never
 * held across the loader call, a prefetch's included; the prefetched flag
 * and the prefetch counters are fields like the others, under mu.
 * clear/evict_model hold it to unlink victims, drop it for madvise, and
 * retake it to free the slots. A referenced
 * chunk's len is read without the lock: it was written before the chunk
 * became READY, and the reader's reference was taken under the lock after
 * that, and it cannot change until the last put.
 */
#include "apbundle/cache.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "evict.h"
#include "lock.h"

#define SLOT_ALIGN 4096u
#define HUGE_PAGE (2u << 20) /* x86-64's and arm64's (4 KiB pages) PMD size */
#define DEFAULT_PREFETCH_SHARE_PCT 50u

enum chunk_state {
	CHUNK_FREE = 0, /* what calloc gives a slot never used */
	CHUNK_LOADING,
	CHUNK_READY,
	CHUNK_FAILED,
	CHUNK_RECLAIM,
	CHUNK_DETACHED,
};

struct apb_chunk {
	unsigned char *data;          /* immutable: slot i's chunk_size bytes */
	/* Everything below: cache mu. */
	uint64_t index;
	uint32_t model;
	uint32_t refs;                /* get references, loader included */
	enum chunk_state state;
	int load_error;               /* FAILED: the loader's negative errno */
	size_t len;                   /* READY: valid bytes */
	bool prefetched;              /* loaded by a prefetch, not yet read */
	bool ahead;                   /* loaded with a get's miss for the
				       * reader that gets it next: its first
				       * get counts the miss */
	struct apb_chunk *hash_next;  /* table chain; RECLAIM: private list */
	struct apb_evict_node evict;  /* evict.c's: set links, LFU counts */
};

/* A model's pin (PINNING above). All fields: cache mu. */
struct model_pin {
	bool pinned;
	uint64_t nchunks;             /* while pinned: chunks 0 .. nchunks-1 */
	uint64_t epoch;               /* pins so far; tells a pin its own */
};

struct apb_cache {
	/* Immutable after apb_cache_new(). */
	uint32_t chunk_size;
	uint32_t nslots;
	uint32_t run_max;        /* most chunks per load (config) */
	uint32_t model_count;
	uint32_t bucket_mask;
	uint32_t prefetch_share;      /* most prefetched chunks not yet read */
	apb_cache_load_fn load;
	void *load_ctx;
	apb_cache_trace_fn trace;     /* NULL: not traced */
	void *trace_ctx;
	unsigned char *region;        /* nslots * chunk_size bytes */
	size_t region_bytes;
	struct apb_chunk *chunks;     /* [nslots], chunks[i] <-> slot i */

	struct apb_mutex mu;
	pthread_cond_t slot_cv;       /* a slot got free or evictable */
	pthread_cond_t load_cv;       /* some load finished */

	/* Everything below: mu. */
	struct apb_chunk **buckets;   /* [bucket_mask + 1] chains */
	uint32_t *free_slots;         /* stack of free slot numbers */
	uint32_t nfree;
	uint32_t fresh;               /* slots fresh .. nslots - 1 were never
				       * used: FREE, on no stack, metadata
				       * untouched (zero) */
	uint32_t used_slots;          /* LOADING, READY or FAILED */
	uint32_t slot_waiters;        /* gets waiting on slot_cv */
	struct apb_evict *evictable;  /* READY chunks with refs == 0 */

	/* budget/used filled in on read; resident_chunks,
	 * prefetch_unused_chunks and pinned_bytes are state, the rest
	 * counters. */
	struct apb_cache_stats st;
	struct apb_cache_model_stats *models; /* [model_count] */
	struct model_pin *pins;       /* [model_count] */
	uint64_t pinned_slots;        /* sum of nchunks over pinned models */
};

/* ---- hash table ------------------------------------------------------ */

static uint32_t bucket_of(const struct apb_cache *c, uint32_t model,
			  uint64_t index)
{
	return (uint32_t)apb_key_hash(model, index) & c->bucket_mask;
}

static struct apb_chunk *table_find(struct apb_cache *c, uint32_t model,
				    uint64_t index)
{
	struct apb_chunk *ch = c->buckets[bucket_of(c, model, index)];

	while (ch && (ch->model != model || ch->index != index))
		ch = ch->hash_next;
	return ch;
}

static void table_insert(struct apb_cache *c, struct apb_chunk *ch)
{
	struct apb_chunk **head = &c->buckets[bucket_of(c, ch->model, ch->index)];

	assert(!table_find(c, ch->model, ch->index));
	ch->hash_next = *head;
	*head = ch;
}

static void table_remove(struct apb_cache *c, struct apb_chunk *ch)
{
	struct apb_chunk **p = &c->buckets[bucket_of(c, ch->model, ch->index)];

	while (*p != ch) {
		assert(*p); /* ch must be in its chain */
		p = &(*p)->hash_next;
	}
	*p = ch->hash_next;
	ch->hash_next = NULL;
}

/* ---- pins (PINNING above) ------------------------------------------- */

/* A chunk of a pinned model within the pinned range: never evictable. */
static bool chunk_pinned(const struct apb_cache *c, const struct apb_chunk *ch)
{
	const struct model_pin *p = &c->pins[ch->model];

	return p->pinned && ch->index < p->nchunks;
}

/* ---- the evictable set (evict.c) ------------------------------------ */

/* The chunk a node of the evictable set is embedded in. */
static struct apb_chunk *chunk_of(struct apb_evict_node *n)
{
	return (struct apb_chunk *)((char *)n -
				    offsetof(struct apb_chunk, evict));
}

/* A chunk that nobody has read yet enters cold: first in line to go. */
static void evict_insert(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->state == CHUNK_READY && ch->refs == 0 &&
	       !chunk_pinned(c, ch));
	if (ch->prefetched)
		apb_evict_insert_cold(c->evictable, &ch->evict);
	else
		apb_evict_insert(c->evictable, &ch->evict);
	if (c->slot_waiters)
		pthread_cond_broadcast(&c->slot_cv);
}

static void evict_remove(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->state == CHUNK_READY && ch->refs == 0);
	apb_evict_remove(c->evictable, &ch->evict);
}

/* The chunk to evict for room; with spare_cold, never an unread
 * prefetched one (a prefetch must not evict another). */
static struct apb_chunk *evict_pop_victim(struct apb_cache *c, bool spare_cold)
{
	struct apb_evict_node *n = spare_cold ?
		apb_evict_pop_warm_victim(c->evictable) :
		apb_evict_pop_victim(c->evictable);
	struct apb_chunk *victim = n ? chunk_of(n) : NULL;

	assert(!victim || (victim->state == CHUNK_READY && victim->refs == 0));
	return victim;
}

/* ---- slots and residency --------------------------------------------- */

static uint32_t slot_of(const struct apb_cache *c, const struct apb_chunk *ch)
{
	return (uint32_t)(ch - c->chunks);
}

/* Count a chunk that just became READY as resident. */
static void resident_add(struct apb_cache *c, struct apb_chunk *ch)
{
	c->st.resident_chunks++;
	c->models[ch->model].resident_bytes += ch->len;
	if (chunk_pinned(c, ch))
		c->st.pinned_bytes += ch->len;
}

/* ---- the prefetched flag ---------------------------------------------- */

static void prefetch_mark(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(!ch->prefetched &&
	       c->st.prefetch_unused_chunks < c->prefetch_share);
	ch->prefetched = true;
	c->st.prefetch_unused_chunks++;
}

static void prefetch_unmark(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->prefetched && c->st.prefetch_unused_chunks > 0);
	ch->prefetched = false;
	c->st.prefetch_unused_chunks--;
}

/* A get reads a prefetched chunk for the first time. */
static void prefetch_read(struct apb_cache *c, struct apb_chunk *ch)
{
	prefetch_unmark(c, ch);
	c->st.prefetch_hits++;
	c->st.prefetch_hits_bytes += ch->len;
	c->models[ch->model].prefetch_hits++;
}

/* A prefetched chunk leaves the cache unread. */
static void prefetch_waste(struct apb_cache *c, struct apb_chunk *ch)
{
	prefetch_unmark(c, ch);
	c->st.prefetch_wasted++;
	c->st.prefetch_wasted_bytes += ch->len;
	c->models[ch->model].prefetch_wasted++;
}

/* Take a READY chunk out of the table and the residency counters, and
 * count its eviction (and, if nobody read it, a wasted prefetch). The
 * caller decides what its slot becomes. */
static void chunk_forget(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->state == CHUNK_READY && !chunk_pinned(c, ch));
	if (ch->prefetched)
		prefetch_waste(c, ch);
	table_remove(c, ch);
	apb_evict_forget(c->evictable, &ch->evict);
	assert(c->st.resident_chunks > 0);
	c->st.resident_chunks--;
	c->models[ch->model].resident_bytes -= ch->len;
	c->st.evictions++;
	c->models[ch->model].evictions++;
}

/* Forget a READY, unreferenced chunk already out of the evictable set. */
static void chunk_drop(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->refs == 0);
	chunk_forget(c, ch);
}

/* Put a slot no longer counted in used_slots on the free stack. */
static void slot_push_free(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(c->nfree < c->nslots);
	ch->state = CHUNK_FREE;
	c->free_slots[c->nfree++] = slot_of(c, ch);
	if (c->slot_waiters)
		pthread_cond_broadcast(&c->slot_cv);
}

/* A used slot (a failed load's) becomes free. */
static void slot_release(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(c->used_slots > 0);
	c->used_slots--;
	slot_push_free(c, ch);
}

/* A slot for a new chunk: a free one, else the policy's victim's (with
 * spare_cold, not an unread prefetched chunk's). NULL if every slot is
 * referenced or loading (or, with spare_cold, holds such a chunk). */
static struct apb_chunk *slot_take(struct apb_cache *c, bool spare_cold)
{
	struct apb_chunk *ch;

	if (c->nfree > 0 || c->fresh < c->nslots) {
		if (c->nfree > 0) {
			ch = &c->chunks[c->free_slots[--c->nfree]];
		} else {
			ch = &c->chunks[c->fresh];
			ch->data = c->region + (size_t)c->fresh++ * c->chunk_size;
		}
		assert(ch->state == CHUNK_FREE);
		c->used_slots++;
		return ch;
	}
	ch = evict_pop_victim(c, spare_cold);
	if (ch)
		chunk_drop(c, ch);
	return ch;
}

/* ---- get and put ----------------------------------------------------- */

static void lock(struct apb_cache *c)
{
	apb_mutex_lock(&c->mu);
}

static void unlock(struct apb_cache *c)
{
	apb_mutex_unlock(&c->mu);
}

static void count_access(struct apb_cache *c, uint32_t model, bool hit,
			 bool reuse)
{
	if (hit) {
		c->st.hits++;
		c->models[model].hits++;
		c->st.reuse_hits += reuse;
		c->models[model].reuse_hits += reuse;
	} else {
		c->st.misses++;
		c->models[model].misses++;
	}
}

/* An unread prefetched chunk of a pinned model is used by the pin: it
 * counts as a prefetch hit and as read once (LFU: F >= 1 for its insert
 * on unpin). Leaves ch off the evictable set. */
static void pin_adopt(struct apb_cache *c, struct apb_chunk *ch)
{
	if (!ch->prefetched)
		return;
	prefetch_read(c, ch);
	apb_evict_touch(c->evictable, &ch->evict);
}

/* Take a reference without counting a use (chunk_ref() counts one). */
static void chunk_hold(struct apb_cache *c, struct apb_chunk *ch)
{
	if (ch->refs == 0 && !chunk_pinned(c, ch))
		evict_remove(c, ch);
	ch->refs++;
}

static void chunk_ref(struct apb_cache *c, struct apb_chunk *ch)
{
	chunk_hold(c, ch);
	apb_evict_touch(c->evictable, &ch->evict);
}

static void chunk_unref(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->refs > 0);
	if (--ch->refs > 0)
		return;
	if (ch->state == CHUNK_READY) {
		if (chunk_pinned(c, ch))
			pin_adopt(c, ch); /* stays off the evictable set */
		else
			evict_insert(c, ch);
	} else {
		assert(ch->state == CHUNK_FAILED);
		slot_release(c, ch);
	}
}

/* Enter (model, index) LOADING in the slot of ch, a fresh slot from
 * slot_take(), referenced once by its loader. mu held. */
static void chunk_load_begin(struct apb_cache *c, struct apb_chunk *ch,
			     uint32_t model, uint64_t index)
{
	apb_assert_held(&c->mu);
	ch->model = model;
	ch->index = index;
	ch->state = CHUNK_LOADING;
	ch->refs = 1;
	ch->len = 0;
	ch->load_error = 0;
	ch->ahead = false;
	apb_evict_node_init(c->evictable, &ch->evict, model, index);
	table_insert(c, ch);
}

/* The loader of ch returned n (a length or a negative errno, as
 * run_load() gives it): ch becomes READY, still referenced by its loader, or
 * FAILED and dropped by it (counting a load error if count_error: a run
 * counts one per failed load call, not per chunk); waiters wake. mu held. */
static int chunk_load_end(struct apb_cache *c, struct apb_chunk *ch, long n,
			  bool count_error)
{
	apb_assert_held(&c->mu);
	assert(ch->state == CHUNK_LOADING && ch->refs >= 1);
	if (ch->refs > 1) /* every waiter holds a reference */
		pthread_cond_broadcast(&c->load_cv);
	if (n < 0) {
		if (ch->prefetched)
			prefetch_unmark(c, ch); /* nothing issued, nothing wasted */
		table_remove(c, ch);
		apb_evict_forget(c->evictable, &ch->evict); /* a waiter's touch */
		ch->state = CHUNK_FAILED;
		ch->load_error = (int)n;
		c->st.load_errors += count_error;
		chunk_unref(c, ch);
		return (int)n;
	}
	ch->len = (size_t)n;
	ch->state = CHUNK_READY;
	resident_add(c, ch);
	c->st.loaded_bytes += (uint64_t)n;
	return 0;
}

/* Wait, referenced, for another thread's load of ch. Keeps the reference
 * on success; drops it on failure. Called and returns with mu held. */
static int chunk_wait_loaded(struct apb_cache *c, struct apb_chunk *ch)
{
	int rc;

	apb_assert_held(&c->mu);
	chunk_ref(c, ch);
	while (ch->state == CHUNK_LOADING)
		apb_cond_wait(&c->load_cv, &c->mu);
	/* A clear may have detached it between the load and our wake-up;
	 * its bytes are still the chunk's and ours to read. */
	if (ch->state == CHUNK_READY || ch->state == CHUNK_DETACHED)
		return 0;
	assert(ch->state == CHUNK_FAILED);
	rc = ch->load_error;
	chunk_unref(c, ch);
	return rc;
}

/* Count the access of a get once, at the first point it is decided. */
static void count_once(struct apb_cache *c, uint32_t model, bool hit,
		       bool reuse, bool *counted)
{
	if (!*counted)
		count_access(c, model, hit, reuse);
	*counted = true;
}

static void run_load(struct apb_cache *c, uint32_t model, uint64_t first,
		     struct apb_chunk *const *run, uint32_t n, long *result);

/* Take slots for the chunks after a get's miss, first .. first + count - 1,
 * that are absent and get a slot without waiting (and while no get waits
 * for one: demand before read-ahead of any kind), up to the first that
 * does not; enter them LOADING and ahead, as run[0 ..). mu held. */
static uint32_t ahead_take(struct apb_cache *c, uint32_t model, uint64_t first,
			   uint32_t count, struct apb_chunk **run)
{
	uint32_t n;

	apb_assert_held(&c->mu);
	for (n = 0; n < count && c->slot_waiters == 0; n++) {
		struct apb_chunk *ch;

		if (table_find(c, model, first + n))
			break;
		ch = slot_take(c, false);
		if (!ch)
			break;
		chunk_load_begin(c, ch, model, first + n);
		ch->ahead = true;
		run[n] = ch;
	}
	return n;
}

/* Load the missed chunk ch (a fresh slot from slot_take()) and up to
 * ahead chunks after it in the same load call. Called
 * and returns with mu held; drops it around the load. On success ch is
 * READY and referenced once for the caller; the chunks after it are READY
 * and unreferenced, or gone if their part of the load failed. */
static int miss_load(struct apb_cache *c, struct apb_chunk *ch, uint32_t model,
		     uint64_t index, uint32_t ahead)
{
	struct apb_chunk *run[APB_CACHE_RUN_LIMIT];
	long result[APB_CACHE_RUN_LIMIT];
	uint32_t n = 1;
	int rc;

	apb_assert_held(&c->mu);
	chunk_load_begin(c, ch, model, index);
	run[0] = ch;
	/* At most an eighth of the slots: with a budget of a few chunks,
	 * concurrent reads would evict each other's runs before they are
	 * read (and load them twice). */
	if (ahead > c->nslots / 8)
		ahead = c->nslots / 8;
	if (ahead > c->run_max - 1)
		ahead = c->run_max - 1;
	if (ahead > 0)
		n += ahead_take(c, model, index + 1, ahead, run + 1);
	unlock(c);
	run_load(c, model, index, run, n, result);
	lock(c);
	rc = chunk_load_end(c, ch, result[0], true);
	/* The read gets them next: in the eviction order they are used now
	 * (as the loading get's chunk is), and their first get, which finds
	 * them ahead, does not count that use again. */
	for (uint32_t i = 1; i < n; i++) {
		if (chunk_load_end(c, run[i], result[i], false) != 0)
			continue;
		apb_evict_touch(c->evictable, &run[i]->evict);
		chunk_unref(c, run[i]); /* the loader's */
	}
	return rc;
}

/* apb_cache_get_ahead(): get and tryget differ only in what happens when
 * no slot can be had. */
static int get_chunk(struct apb_cache *c, uint32_t model, uint64_t index,
		     uint32_t ahead, bool may_wait, struct apb_chunk **out)
{
	struct apb_chunk *ch;
	bool counted = false;
	int rc;

	*out = NULL;
	if (model >= c->model_count)
		return -EINVAL;
	lock(c);
	for (;;) {
		ch = table_find(c, model, index);
		if (ch) {
			/* Prefetched: READY, or being loaded by a prefetch.
			 * Ahead: loaded with a miss, for this read. */
			bool ahead = ch->ahead;
			bool reuse = ch->state == CHUNK_READY && !ahead &&
				     !ch->prefetched;

			count_once(c, model, reuse || ch->prefetched, reuse,
				   &counted);
			ch->ahead = false;
			if (ch->state == CHUNK_READY) {
				if (ahead)
					chunk_hold(c, ch);
				else
					chunk_ref(c, ch);
				if (ch->prefetched)
					prefetch_read(c, ch);
				rc = 0;
			} else {
				rc = chunk_wait_loaded(c, ch);
			}
			break;
		}
		ch = slot_take(c, false);
		if (!ch && !may_wait) {
			rc = -EAGAIN; /* nothing counted: the caller will retry */
			break;
		}
		count_once(c, model, false, false, &counted);
		if (ch) {
			rc = miss_load(c, ch, model, index, ahead);
			if (rc == 0) /* the loading get is a use, like any */
				apb_evict_touch(c->evictable, &ch->evict);
			break;
		}
		c->slot_waiters++;
		apb_cond_wait(&c->slot_cv, &c->mu);
		c->slot_waiters--;
	}
	unlock(c);
	/* Only a counted get: a tryget that found no slot is retried. */
	if (c->trace && counted)
		c->trace(c->trace_ctx, model, index, 1, APB_ACCESS_DEMAND);
	if (rc == 0)
		*out = ch;
	return rc;
}

int apb_cache_get(struct apb_cache *c, uint32_t model, uint64_t index,
		  struct apb_chunk **out)
{
	return get_chunk(c, model, index, 0, true, out);
}

int apb_cache_tryget(struct apb_cache *c, uint32_t model, uint64_t index,
		     struct apb_chunk **out)
{
	return get_chunk(c, model, index, 0, false, out);
}

int apb_cache_get_ahead(struct apb_cache *c, uint32_t model, uint64_t index,
			uint32_t ahead, bool may_wait, struct apb_chunk **out)
{
	return get_chunk(c, model, index, ahead, may_wait, out);
}

static void reclaim_pages(struct apb_cache *c, struct apb_chunk *list);

void apb_cache_put(struct apb_cache *c, struct apb_chunk *chunk)
{
	if (!chunk)
		return;
	lock(c);
	assert((chunk->state == CHUNK_READY || chunk->state == CHUNK_DETACHED) &&
	       chunk->refs > 0);
	if (chunk->state == CHUNK_READY || chunk->refs > 1) {
		chunk_unref(c, chunk);
		unlock(c);
		return;
	}
	/* The last holder of a chunk that clear/evict_model dropped: its
	 * memory goes back to the OS now, as it would have then. */
	chunk->refs = 0;
	chunk->state = CHUNK_RECLAIM;
	c->used_slots--;
	unlock(c);
	chunk->hash_next = NULL;
	reclaim_pages(c, chunk);
	lock(c);
	slot_push_free(c, chunk);
	unlock(c);
}

const void *apb_chunk_data(const struct apb_chunk *chunk)
{
	return chunk->data;
}

size_t apb_chunk_len(const struct apb_chunk *chunk)
{
	return chunk->len;
}

/* ---- prefetch -------------------------------------------------------- */

/* A slot for a prefetch, or NULL: never waits, never exceeds the share,
 * never evicts an unread prefetched chunk, and never takes a slot that a
 * waiting get could have. */
static struct apb_chunk *prefetch_slot(struct apb_cache *c)
{
	if (c->st.prefetch_unused_chunks >= c->prefetch_share)
		return NULL;
	if (c->slot_waiters > 0)
		return NULL;
	return slot_take(c, true);
}

/* A prefetch load succeeded: ch is READY, referenced by the loader. */
static void prefetch_loaded(struct apb_cache *c, struct apb_chunk *ch)
{
	c->st.prefetch_issued++;
	c->st.prefetch_issued_bytes += ch->len;
	c->models[ch->model].prefetch_issued++;
	/* Gets that waited for the load hold references and will return
	 * this chunk whatever happens next: the first of them reads it. */
	if (ch->refs > 1)
		prefetch_read(c, ch);
	chunk_unref(c, ch); /* the loader's; unread, it enters cold */
}

/* Take slots for the longest prefix of [first, first + count) that is
 * absent and gets prefetch slots, and enter each chunk LOADING and
 * prefetched, as run[0 ..). Returns how many. mu held. */
static uint32_t prefetch_take(struct apb_cache *c, uint32_t model,
			      uint64_t first, uint32_t count,
			      struct apb_chunk **run)
{
	uint32_t n;

	apb_assert_held(&c->mu);
	for (n = 0; n < count; n++) {
		struct apb_chunk *ch;

		if (table_find(c, model, first + n))
			break;
		ch = prefetch_slot(c);
		if (!ch)
			break;
		prefetch_mark(c, ch);
		chunk_load_begin(c, ch, model, first + n);
		run[n] = ch;
	}
	return n;
}

/* Run the loader for the n chunks of run, whose slots this thread owns
 * while they are LOADING; result[i] is chunk i's length or a negative
 * errno. A loader that breaks its contract (a length over the chunk size,
 * an error that is no errno) fails with -EIO: it is never trusted. Called
 * without mu. (Prefetch runs, and a get's miss with the chunks after it.) */
static void run_load(struct apb_cache *c, uint32_t model, uint64_t first,
		     struct apb_chunk *const *run, uint32_t n, long *result)
{
	void *bufs[APB_CACHE_RUN_LIMIT] = {NULL};
	size_t lens[APB_CACHE_RUN_LIMIT] = {0};
	long rc;

	for (uint32_t i = 0; i < n; i++)
		bufs[i] = run[i]->data;
	rc = c->load(c->load_ctx, model, first, bufs, n, c->chunk_size, lens);
	if (rc < -4095)
		rc = -EIO;
	for (uint32_t i = 0; i < n; i++) {
		if (rc < 0)
			result[i] = rc;
		else if (lens[i] > c->chunk_size)
			result[i] = -EIO;
		else
			result[i] = (long)lens[i];
	}
}

int apb_cache_prefetch_run(struct apb_cache *c, uint32_t model, uint64_t first,
			   uint32_t count, uint32_t *loaded)
{
	struct apb_chunk *run[APB_CACHE_RUN_LIMIT];
	long result[APB_CACHE_RUN_LIMIT];
	uint32_t n;
	int rc = 0;

	*loaded = 0;
	if (model >= c->model_count)
		return -EINVAL;
	if (count > c->run_max)
		count = c->run_max;
	if (c->trace && count > 0)
		c->trace(c->trace_ctx, model, first, count, APB_ACCESS_PREFETCH);
	lock(c);
	n = prefetch_take(c, model, first, count, run);
	if (n == 0) {
		/* Present (nothing to do) or no room for even one. */
		rc = count == 0 || table_find(c, model, first) ? 0 : -EAGAIN;
		unlock(c);
		return rc;
	}
	unlock(c);
	run_load(c, model, first, run, n, result);
	lock(c);
	for (uint32_t i = 0; i < n; i++) {
		/* One failed load call: the first chunk it failed counts it. */
		int r = chunk_load_end(c, run[i], result[i], rc == 0);

		if (r == 0)
			prefetch_loaded(c, run[i]);
		else if (rc == 0)
			rc = r;
	}
	unlock(c);
	*loaded = n;
	return rc;
}

int apb_cache_prefetch(struct apb_cache *c, uint32_t model, uint64_t index)
{
	uint32_t loaded;

	return apb_cache_prefetch_run(c, model, index, 1, &loaded);
}

/* ---- clear and evict_model ------------------------------------------- */

#ifndef NDEBUG
/* Every structure agrees with every other; O(slots ever used), for
 * assert(). */
static bool cache_consistent(struct apb_cache *c)
{
	uint32_t nfree = 0, used = 0, evictable = 0, resident = 0;
	uint32_t prefetched = 0, cold = 0;
	uint64_t pinned = 0, pinned_bytes = 0, reserved = 0;

	for (uint32_t m = 0; m < c->model_count; m++)
		reserved += c->pins[m].pinned ? c->pins[m].nchunks : 0;
	if (reserved != c->pinned_slots || (reserved > 0 &&
	    reserved + APB_CACHE_UNPINNED_MIN(c->nslots) > c->nslots))
		return false;

	for (uint32_t i = 0; i < c->fresh; i++) {
		struct apb_chunk *ch = &c->chunks[i];
		bool in_table = ch->state == CHUNK_LOADING ||
				ch->state == CHUNK_READY;

		nfree += ch->state == CHUNK_FREE;
		used += ch->state != CHUNK_FREE && ch->state != CHUNK_RECLAIM;
		resident += ch->state == CHUNK_READY;
		evictable += ch->state == CHUNK_READY && ch->refs == 0 &&
			     !chunk_pinned(c, ch);
		if (ch->state == CHUNK_READY && chunk_pinned(c, ch)) {
			pinned++;
			pinned_bytes += ch->len;
			/* The pin read it: no unread prefetch. */
			if (ch->refs == 0 && ch->prefetched)
				return false;
		}
		if (in_table && table_find(c, ch->model, ch->index) != ch)
			return false;
		if ((ch->state == CHUNK_FAILED || ch->state == CHUNK_DETACHED) &&
		    ch->refs == 0)
			return false;
		/* Only in the table, and only unreferenced once loaded. */
		if (ch->prefetched && !(ch->state == CHUNK_LOADING ||
					(ch->state == CHUNK_READY && ch->refs == 0)))
			return false;
		prefetched += ch->prefetched;
		cold += ch->prefetched && ch->state == CHUNK_READY;
	}
	return apb_evict_consistent(c->evictable) &&
	       nfree == c->nfree && used == c->used_slots &&
	       c->fresh <= c->nslots &&
	       evictable == apb_evict_count(c->evictable) &&
	       resident == c->st.resident_chunks &&
	       prefetched == c->st.prefetch_unused_chunks &&
	       prefetched <= c->prefetch_share &&
	       cold == apb_evict_cold_count(c->evictable) &&
	       pinned <= c->pinned_slots &&
	       pinned_bytes == c->st.pinned_bytes;
}
#endif

/* Give the pages of a private list of RECLAIM chunks (in slot order) back
 * to the OS, one madvise per run of adjacent slots. Runs without mu. */
static void reclaim_pages(struct apb_cache *c, struct apb_chunk *list)
{
	while (list) {
		struct apb_chunk *first = list, *last = list;

		while (last->hash_next && last->hash_next == last + 1)
			last = last->hash_next;
		list = last->hash_next;
		/* Advice only: on failure the pages merely stay resident. */
		(void)madvise(first->data,
			      (size_t)(last - first + 1) * c->chunk_size,
			      MADV_DONTNEED);
	}
}

/* Drop every READY chunk of model (all models if all) that is not pinned,
 * and return the memory of the unreferenced ones to the OS. A referenced
 * chunk is detached instead: out of the table and the counters at once (so
 * a new get loads a fresh copy), its slot reclaimed by the last put. */
static void drop_unreferenced(struct apb_cache *c, bool all, uint32_t model)
{
	struct apb_chunk *list = NULL, **tail = &list;

	lock(c);
	assert(cache_consistent(c));
	for (uint32_t i = 0; i < c->fresh; i++) { /* the rest are FREE */
		struct apb_chunk *ch = &c->chunks[i];

		if (ch->state != CHUNK_READY || (!all && ch->model != model) ||
		    chunk_pinned(c, ch))
			continue;
		if (ch->refs > 0) {
			chunk_forget(c, ch);
			ch->state = CHUNK_DETACHED;
			continue;
		}
		evict_remove(c, ch);
		chunk_drop(c, ch);
		ch->state = CHUNK_RECLAIM;
		c->used_slots--;
		*tail = ch;
		tail = &ch->hash_next;
	}
	unlock(c);

	reclaim_pages(c, list);

	lock(c);
	while (list) {
		struct apb_chunk *ch = list;

		list = ch->hash_next;
		ch->hash_next = NULL;
		slot_push_free(c, ch);
	}
	assert(cache_consistent(c));
	unlock(c);
}

void apb_cache_evict_model(struct apb_cache *c, uint32_t model)
{
	if (model < c->model_count)
		drop_unreferenced(c, false, model);
}

void apb_cache_clear(struct apb_cache *c)
{
	drop_unreferenced(c, true, 0);
}

/* ---- pinning --------------------------------------------------------- */

/* Mark model pinned over nchunks chunks and reserve them; take the chunks
 * already resident off the evictable set. mu held. */
static void pin_begin(struct apb_cache *c, uint32_t model, uint64_t nchunks)
{
	struct model_pin *p = &c->pins[model];

	apb_assert_held(&c->mu);
	p->pinned = true;
	p->nchunks = nchunks;
	p->epoch++;
	c->pinned_slots += nchunks;
	for (uint64_t i = 0; i < nchunks; i++) {
		struct apb_chunk *ch = table_find(c, model, i);

		if (!ch || ch->state != CHUNK_READY)
			continue; /* LOADING: counted when it becomes READY */
		c->st.pinned_bytes += ch->len;
		if (ch->refs == 0) {
			evict_remove(c, ch);
			pin_adopt(c, ch);
		}
	}
}

/* Unpin model: its unreferenced READY chunks enter the evictable set warm,
 * the reservation goes back. mu held. */
static void pin_end(struct apb_cache *c, uint32_t model)
{
	struct model_pin *p = &c->pins[model];
	uint64_t nchunks = p->nchunks;

	apb_assert_held(&c->mu);
	assert(p->pinned && c->pinned_slots >= nchunks);
	p->pinned = false;
	p->nchunks = 0;
	c->pinned_slots -= nchunks;
	for (uint64_t i = 0; i < nchunks; i++) {
		struct apb_chunk *ch = table_find(c, model, i);

		if (!ch || ch->state != CHUNK_READY)
			continue;
		assert(c->st.pinned_bytes >= ch->len);
		c->st.pinned_bytes -= ch->len;
		if (ch->refs == 0)
			evict_insert(c, ch);
	}
}

/* Slots a new pin may still reserve: the rest of the budget after the
 * pins so far and the APB_CACHE_UNPINNED_MIN kept for other reads. */
static uint64_t pin_room(const struct apb_cache *c)
{
	uint64_t keep = APB_CACHE_UNPINNED_MIN((uint64_t)c->nslots);

	return c->nslots > keep + c->pinned_slots
		       ? c->nslots - keep - c->pinned_slots : 0;
}

int apb_cache_pin_model(struct apb_cache *c, uint32_t model,
			uint64_t model_size)
{
	struct apb_chunk *ch;
	uint64_t nchunks, epoch, i;
	int rc = 0;

	if (model >= c->model_count)
		return -EINVAL;
	nchunks = model_size / c->chunk_size + (model_size % c->chunk_size != 0);
	lock(c);
	if (c->pins[model].pinned) {
		unlock(c);
		return 0;
	}
	if (nchunks > pin_room(c)) {
		unlock(c);
		return -ENOSPC;
	}
	pin_begin(c, model, nchunks);
	epoch = c->pins[model].epoch;
	assert(cache_consistent(c));
	unlock(c);

	/* One get at a time, holding no other reference: never stuck, as at
	 * least APB_CACHE_UNPINNED_MIN slots hold no pinned chunk. */
	for (i = 0; i < nchunks && rc == 0; i++) {
		rc = apb_cache_get(c, model, i, &ch);
		if (rc == 0)
			apb_cache_put(c, ch);
	}
	if (rc == 0)
		return 0;
	lock(c);
	/* Undo our own pin only, not one an unpin and a new pin replaced. */
	if (c->pins[model].pinned && c->pins[model].epoch == epoch)
		pin_end(c, model);
	assert(cache_consistent(c));
	unlock(c);
	return rc;
}

int apb_cache_unpin_model(struct apb_cache *c, uint32_t model)
{
	int rc = -EINVAL;

	if (model >= c->model_count)
		return -EINVAL;
	lock(c);
	if (c->pins[model].pinned) {
		pin_end(c, model);
		rc = 0;
	}
	assert(cache_consistent(c));
	unlock(c);
	return rc;
}

bool apb_cache_model_pinned(struct apb_cache *c, uint32_t model)
{
	bool pinned;

	if (model >= c->model_count)
		return false;
	lock(c);
	pinned = c->pins[model].pinned;
	unlock(c);
	return pinned;
}

/* ---- statistics ------------------------------------------------------ */

/* Zero every counter; keep the state (residency, unread prefetches). */
void apb_cache_reset_stats(struct apb_cache *c)
{
	struct apb_cache_stats state = {0};

	lock(c);
	state.resident_chunks = c->st.resident_chunks;
	state.prefetch_unused_chunks = c->st.prefetch_unused_chunks;
	state.pinned_bytes = c->st.pinned_bytes;
	c->st = state;
	for (uint32_t m = 0; m < c->model_count; m++) {
		struct apb_cache_model_stats model_state = {
			.resident_bytes = c->models[m].resident_bytes,
		};

		c->models[m] = model_state;
	}
	unlock(c);
}

uint32_t apb_cache_run_max(const struct apb_cache *c)
{
	return c->run_max;
}

void apb_cache_stats(struct apb_cache *c, struct apb_cache_stats *out)
{
	lock(c);
	*out = c->st;
	out->budget_bytes = (uint64_t)c->nslots * c->chunk_size;
	out->used_bytes = (uint64_t)c->used_slots * c->chunk_size;
	out->pinnable_bytes = pin_room(c) * c->chunk_size;
	out->prefetch_share_bytes = (uint64_t)c->prefetch_share * c->chunk_size;
	unlock(c);
}

void apb_cache_model_stats(struct apb_cache *c, uint32_t model,
			   struct apb_cache_model_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (model >= c->model_count)
		return;
	lock(c);
	*out = c->models[model];
	unlock(c);
}

/* ---- policies by name ------------------------------------------------- */

static const char *const policy_names[APB_EVICT_COUNT] = {
	[APB_EVICT_LRU] = "lru",
	[APB_EVICT_LFU] = "lfu",
	[APB_EVICT_AUTO] = "auto",
};

const char *apb_eviction_name(enum apb_eviction policy)
{
	return (unsigned)policy < APB_EVICT_COUNT ? policy_names[policy] : NULL;
}

int apb_eviction_parse(const char *name, enum apb_eviction *out)
{
	for (unsigned i = 0; i < APB_EVICT_COUNT; i++) {
		if (strcmp(name, policy_names[i]) == 0) {
			*out = (enum apb_eviction)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* ---- lifetime -------------------------------------------------------- */

static int config_check(const struct apb_cache_config *cfg)
{
	if (!cfg || !cfg->load)
		return -EINVAL;
	if (cfg->chunk_size < SLOT_ALIGN || cfg->chunk_size % SLOT_ALIGN != 0)
		return -EINVAL;
	if (cfg->budget_bytes < cfg->chunk_size)
		return -EINVAL;
	if (cfg->budget_bytes / cfg->chunk_size > APB_CACHE_MAX_SLOTS)
		return -EINVAL;
	if (!apb_eviction_name(cfg->policy))
		return -EINVAL;
	if (cfg->prefetch_share_pct > 100)
		return -EINVAL;
	if (cfg->run_max > APB_CACHE_RUN_LIMIT)
		return -EINVAL;
	return 0;
}

/* The share of slots unread prefetched chunks may hold: at least one. */
static uint32_t prefetch_share_of(uint32_t nslots, uint32_t pct)
{
	uint64_t share;

	if (pct == 0)
		pct = DEFAULT_PREFETCH_SHARE_PCT;
	share = (uint64_t)nslots * pct / 100;
	return share > 0 ? (uint32_t)share : 1;
}

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 1;

	while (p < n)
		p <<= 1;
	return p;
}

/*
 * The slot region; with huge, on a HUGE_PAGE boundary and marked
 * MADV_HUGEPAGE when it is at least that large. NULL if it cannot be
 * mapped. The pad mapped to find the boundary is unmapped again, so
 * munmap(region, bytes) undoes it.
 */
static unsigned char *map_region(size_t bytes, bool huge)
{
	size_t pad = huge && bytes >= HUGE_PAGE ? HUGE_PAGE : 0, head;
	unsigned char *map, *region;

	map = mmap(NULL, bytes + pad, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED)
		return NULL;
	if (pad == 0)
		return map;
	head = (HUGE_PAGE - (uintptr_t)map % HUGE_PAGE) % HUGE_PAGE;
	region = map + head;
	if (head > 0)
		munmap(map, head);
	if (pad > head)
		munmap(region + bytes, pad - head);
	/* Advice only: where THP is off ("never"), the slots get 4 KiB pages. */
	(void)madvise(region, bytes, MADV_HUGEPAGE);
	return region;
}

/* A zeroed table of n entries of size bytes, reserved as the region is:
 * its pages are allocated when first written, so a large cache pays for
 * the slots it uses, and a budget larger than memory is not refused for
 * metadata it may never touch (MEMORY). NULL if it cannot be mapped. */
static void *table_map(size_t n, size_t size)
{
	void *p = mmap(NULL, n * size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void table_unmap(void *p, size_t n, size_t size)
{
	if (p)
		munmap(p, n * size);
}

/* Allocate the tables; the caller frees on failure. */
static int cache_alloc(struct apb_cache *c, const struct apb_cache_config *cfg)
{
	c->region = map_region(c->region_bytes, cfg->huge_pages);
	if (!c->region)
		return -ENOMEM;
	c->chunks = table_map(c->nslots, sizeof(*c->chunks));
	c->buckets = table_map((size_t)c->bucket_mask + 1,
			       sizeof(*c->buckets));
	c->free_slots = table_map(c->nslots, sizeof(*c->free_slots));
	c->models = calloc(c->model_count ? c->model_count : 1,
			   sizeof(*c->models));
	c->pins = calloc(c->model_count ? c->model_count : 1, sizeof(*c->pins));
	if (!c->chunks || !c->buckets || !c->free_slots || !c->models ||
	    !c->pins)
		return -ENOMEM;
	/* Every slot starts fresh (slot_take): its metadata is zero, which
	 * is CHUNK_FREE, and no page of these tables is touched before a slot
	 * is first used - the first loads fill the region in order. */
	return apb_evict_new(cfg->policy, c->nslots, &c->evictable);
}

static int cache_sync_init(struct apb_cache *c)
{
	int rc = apb_mutex_init(&c->mu);

	if (rc)
		return rc;
	rc = pthread_cond_init(&c->slot_cv, NULL);
	if (rc)
		goto err_mu;
	rc = pthread_cond_init(&c->load_cv, NULL);
	if (rc)
		goto err_slot;
	return 0;
err_slot:
	pthread_cond_destroy(&c->slot_cv);
err_mu:
	apb_mutex_destroy(&c->mu);
	return -rc;
}

static void cache_release(struct apb_cache *c)
{
	if (c->region)
		munmap(c->region, c->region_bytes);
	table_unmap(c->chunks, c->nslots, sizeof(*c->chunks));
	table_unmap(c->buckets, (size_t)c->bucket_mask + 1,
		    sizeof(*c->buckets));
	table_unmap(c->free_slots, c->nslots, sizeof(*c->free_slots));
	free(c->models);
	free(c->pins);
	apb_evict_free(c->evictable);
	free(c);
}

int apb_cache_new(const struct apb_cache_config *cfg, struct apb_cache **out)
{
	struct apb_cache *c = NULL;
	int rc;

	*out = NULL;
	rc = config_check(cfg);
	if (rc)
		return rc;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->chunk_size = cfg->chunk_size;
	c->nslots = (uint32_t)(cfg->budget_bytes / cfg->chunk_size);
	c->run_max = cfg->run_max ? cfg->run_max : APB_CACHE_RUN_MAX;
	c->model_count = cfg->model_count;
	c->bucket_mask = pow2_at_least(2 * c->nslots) - 1;
	c->prefetch_share = prefetch_share_of(c->nslots,
					      cfg->prefetch_share_pct);
	c->load = cfg->load;
	c->load_ctx = cfg->load_ctx;
	c->trace = cfg->trace;
	c->trace_ctx = cfg->trace_ctx;
	c->region_bytes = (size_t)c->nslots * c->chunk_size;

	rc = cache_alloc(c, cfg);
	if (rc)
		goto err;
	rc = cache_sync_init(c);
	if (rc)
		goto err;
	*out = c;
	return 0;
err:
	cache_release(c);
	return rc;
}

void apb_cache_free(struct apb_cache *c)
{
	if (!c)
		return;
	lock(c);
	assert(cache_consistent(c));
	for (uint32_t i = 0; i < c->fresh; i++)
		assert(c->chunks[i].refs == 0);
	unlock(c);
	pthread_cond_destroy(&c->load_cv);
	pthread_cond_destroy(&c->slot_cv);
	apb_mutex_destroy(&c->mu);
	cache_release(c);
}
