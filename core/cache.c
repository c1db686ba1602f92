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
 * really falls (SPEC §6); the next loader into such a slot faults in fresh
 * zero pages.
 *
 * Outside the budget, the cache's own memory is fixed at creation: per slot
 * one struct apb_chunk (80 bytes on LP64), 2 to 4 bucket pointers, a 4-byte
 * free-stack entry and, for LFU, an 8-byte heap entry (at most 124 bytes,
 * 0.2% of a 64 KiB chunk); per model one struct apb_cache_model_stats
 * (32 bytes).
 *
 * STRUCTURES
 *
 * The metadata is a fixed array parallel to the slots: chunks[i] describes
 * slot i and chunks[i].data points at it. Nothing is allocated after
 * apb_cache_new(), so the read path never calls malloc. Every slot's
 * metadata is in exactly one of these states:
 *
 *   FREE     its slot is on the free stack (free_slots[0 .. nfree)).
 *   LOADING  in the hash table; one thread runs the loader into the slot
 *            with the lock dropped. refs >= 1 (the loader's own reference
 *            plus one per waiter).
 *   READY    in the hash table; data[0 .. len) are the chunk's bytes.
 *            With refs == 0 it is also in the evictable set, and only then.
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
 * The hash table chains through hash_next; its bucket array is a power of
 * two >= 2 * nslots fixed at creation. At most nslots chunks are ever in it,
 * so the load factor stays <= 1/2 and it never resizes.
 *
 * EVICTION
 *
 * The READY chunks with refs == 0, and only they, are in the evictable set
 * (c->evictable), the one structure evict.c keeps; its top comment explains
 * the policies (LRU, LFU-DA), why LFU-DA, and the invariant on L. The set
 * reaches a chunk through the struct apb_evict_node embedded in it, and a
 * victim's node leads back to its chunk by offsetof (chunk_of()). Here,
 * evict_insert(), evict_remove() and evict_pop_victim() wrap the set to
 * assert the chunk states and to wake slot waiters.
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
 * COUNTERS (the exact meaning of struct apb_cache_stats)
 *
 * A get of a model >= model_count fails with -EINVAL and counts nothing.
 * Every other get counts exactly one hit or one miss, decided at its first
 * lookup: a hit if the chunk was READY, a miss otherwise - not present, or
 * LOADING (the waiter of an in-flight load is a miss too), and it stays a
 * miss if the get then waits for a slot and finds the chunk loaded by
 * someone else meanwhile. loaded_bytes adds the length each successful load
 * returned. load_errors counts each failed load once, not once per waiter;
 * a loader returning more than chunk_size bytes, or a negative value that
 * is no errno, fails its load with -EIO. evictions counts every READY chunk
 * dropped: for room, by apb_cache_evict_model(), by apb_cache_clear().
 * resident_chunks and the per-model resident_bytes cover READY chunks only.
 * used_bytes covers every slot that is neither free nor being reclaimed
 * (LOADING, READY, DETACHED, FAILED but still referenced): the memory in
 * use.
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
 * held across the loader call. clear/evict_model hold it to unlink victims,
 * drop it for madvise, and retake it to free the slots. A referenced
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
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "evict.h"

#define SLOT_ALIGN 4096u
#define MAX_SLOTS (1u << 30) /* keeps 2 * nslots buckets in a uint32_t */

enum chunk_state {
	CHUNK_FREE,
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
	struct apb_chunk *hash_next;  /* table chain; RECLAIM: private list */
	struct apb_evict_node evict;  /* evict.c's: set links, LFU counts */
};

struct apb_cache {
	/* Immutable after apb_cache_new(). */
	uint32_t chunk_size;
	uint32_t nslots;
	uint32_t model_count;
	uint32_t bucket_mask;
	apb_cache_load_fn load;
	void *load_ctx;
	unsigned char *region;        /* nslots * chunk_size bytes */
	size_t region_bytes;
	struct apb_chunk *chunks;     /* [nslots], chunks[i] <-> slot i */

	pthread_mutex_t mu;
	pthread_cond_t slot_cv;       /* a slot got free or evictable */
	pthread_cond_t load_cv;       /* some load finished */

	/* Everything below: mu. */
	struct apb_chunk **buckets;   /* [bucket_mask + 1] chains */
	uint32_t *free_slots;         /* stack of free slot numbers */
	uint32_t nfree;
	uint32_t used_slots;          /* LOADING, READY or FAILED */
	uint32_t slot_waiters;        /* gets waiting on slot_cv */
	struct apb_evict *evictable;  /* READY chunks with refs == 0 */

	struct apb_cache_stats st;    /* budget/used filled in on read */
	struct apb_cache_model_stats *models; /* [model_count] */
};

/* ---- hash table ------------------------------------------------------ */

static uint32_t bucket_of(const struct apb_cache *c, uint32_t model,
			  uint64_t index)
{
	uint64_t h = index * 0x9e3779b97f4a7c15ull + model;

	/* splitmix64 finalizer: every input bit reaches the low bits. */
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return (uint32_t)h & c->bucket_mask;
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

/* ---- the evictable set (evict.c) ------------------------------------ */

/* The chunk a node of the evictable set is embedded in. */
static struct apb_chunk *chunk_of(struct apb_evict_node *n)
{
	return (struct apb_chunk *)((char *)n -
				    offsetof(struct apb_chunk, evict));
}

static void evict_insert(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->state == CHUNK_READY && ch->refs == 0);
	apb_evict_insert(c->evictable, &ch->evict);
	if (c->slot_waiters)
		pthread_cond_broadcast(&c->slot_cv);
}

static void evict_remove(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->state == CHUNK_READY && ch->refs == 0);
	apb_evict_remove(c->evictable, &ch->evict);
}

static struct apb_chunk *evict_pop_victim(struct apb_cache *c)
{
	struct apb_evict_node *n = apb_evict_pop_victim(c->evictable);
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
}

/* Take a READY chunk out of the table and the residency counters, and
 * count its eviction. The caller decides what its slot becomes. */
static void chunk_forget(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->state == CHUNK_READY);
	table_remove(c, ch);
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

/* A slot for a new chunk: a free one, else the policy's victim's. NULL if
 * every slot is referenced or loading. */
static struct apb_chunk *slot_take(struct apb_cache *c)
{
	struct apb_chunk *ch;

	if (c->nfree > 0) {
		ch = &c->chunks[c->free_slots[--c->nfree]];
		assert(ch->state == CHUNK_FREE);
		c->used_slots++;
		return ch;
	}
	ch = evict_pop_victim(c);
	if (ch)
		chunk_drop(c, ch);
	return ch;
}

/* ---- get and put ----------------------------------------------------- */

static void lock(struct apb_cache *c)
{
	pthread_mutex_lock(&c->mu);
}

static void unlock(struct apb_cache *c)
{
	pthread_mutex_unlock(&c->mu);
}

static void count_access(struct apb_cache *c, uint32_t model, bool hit)
{
	if (hit) {
		c->st.hits++;
		c->models[model].hits++;
	} else {
		c->st.misses++;
		c->models[model].misses++;
	}
}

static void chunk_ref(struct apb_cache *c, struct apb_chunk *ch)
{
	if (ch->refs == 0)
		evict_remove(c, ch);
	ch->refs++;
	apb_evict_touch(c->evictable, &ch->evict);
}

static void chunk_unref(struct apb_cache *c, struct apb_chunk *ch)
{
	assert(ch->refs > 0);
	if (--ch->refs > 0)
		return;
	if (ch->state == CHUNK_READY) {
		evict_insert(c, ch);
	} else {
		assert(ch->state == CHUNK_FAILED);
		slot_release(c, ch);
	}
}

/* A loader's result as a length or a negative errno. */
static long load_result(const struct apb_cache *c, long n)
{
	if (n > (long)c->chunk_size)
		return -EIO; /* loader broke its contract; never trust it */
	if (n < -4095)
		return -EIO; /* not an errno */
	return n;
}

/* Load (model, index) into the slot of ch, a fresh slot from slot_take().
 * Called and returns with mu held; drops it around the loader. On success
 * ch is READY and referenced once for the caller. */
static int chunk_load(struct apb_cache *c, struct apb_chunk *ch,
		      uint32_t model, uint64_t index)
{
	long n;

	ch->model = model;
	ch->index = index;
	ch->state = CHUNK_LOADING;
	ch->refs = 1;
	ch->len = 0;
	ch->load_error = 0;
	apb_evict_node_init(c->evictable, &ch->evict);
	table_insert(c, ch);

	unlock(c);
	n = load_result(c, c->load(c->load_ctx, model, index, ch->data,
				   c->chunk_size));
	lock(c);

	assert(ch->state == CHUNK_LOADING && ch->refs >= 1);
	if (ch->refs > 1) /* every waiter holds a reference */
		pthread_cond_broadcast(&c->load_cv);
	if (n < 0) {
		table_remove(c, ch);
		ch->state = CHUNK_FAILED;
		ch->load_error = (int)n;
		c->st.load_errors++;
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

	chunk_ref(c, ch);
	while (ch->state == CHUNK_LOADING)
		pthread_cond_wait(&c->load_cv, &c->mu);
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
		       bool *counted)
{
	if (!*counted)
		count_access(c, model, hit);
	*counted = true;
}

/* apb_cache_get() and, with may_wait false, apb_cache_tryget(): the only
 * difference is what happens when no slot can be had. */
static int get_chunk(struct apb_cache *c, uint32_t model, uint64_t index,
		     bool may_wait, struct apb_chunk **out)
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
			count_once(c, model, ch->state == CHUNK_READY, &counted);
			if (ch->state == CHUNK_READY) {
				chunk_ref(c, ch);
				rc = 0;
			} else {
				rc = chunk_wait_loaded(c, ch);
			}
			break;
		}
		ch = slot_take(c);
		if (!ch && !may_wait) {
			rc = -EAGAIN; /* nothing counted: the caller will retry */
			break;
		}
		count_once(c, model, false, &counted);
		if (ch) {
			rc = chunk_load(c, ch, model, index);
			break;
		}
		c->slot_waiters++;
		pthread_cond_wait(&c->slot_cv, &c->mu);
		c->slot_waiters--;
	}
	unlock(c);
	if (rc == 0)
		*out = ch;
	return rc;
}

int apb_cache_get(struct apb_cache *c, uint32_t model, uint64_t index,
		  struct apb_chunk **out)
{
	return get_chunk(c, model, index, true, out);
}

int apb_cache_tryget(struct apb_cache *c, uint32_t model, uint64_t index,
		     struct apb_chunk **out)
{
	return get_chunk(c, model, index, false, out);
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

/* ---- clear and evict_model ------------------------------------------- */

#ifndef NDEBUG
/* Every structure agrees with every other; O(nslots), for assert(). */
static bool cache_consistent(struct apb_cache *c)
{
	uint32_t nfree = 0, used = 0, evictable = 0, resident = 0;

	for (uint32_t i = 0; i < c->nslots; i++) {
		struct apb_chunk *ch = &c->chunks[i];
		bool in_table = ch->state == CHUNK_LOADING ||
				ch->state == CHUNK_READY;

		nfree += ch->state == CHUNK_FREE;
		used += ch->state != CHUNK_FREE && ch->state != CHUNK_RECLAIM;
		resident += ch->state == CHUNK_READY;
		evictable += ch->state == CHUNK_READY && ch->refs == 0;
		if (in_table && table_find(c, ch->model, ch->index) != ch)
			return false;
		if ((ch->state == CHUNK_FAILED || ch->state == CHUNK_DETACHED) &&
		    ch->refs == 0)
			return false;
	}
	return nfree == c->nfree && used == c->used_slots &&
	       evictable == apb_evict_count(c->evictable) &&
	       resident == c->st.resident_chunks;
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

/* Drop every READY chunk of model (all models if all) and return the
 * memory of the unreferenced ones to the OS. A referenced chunk is
 * detached instead: out of the table and the counters at once (so a new get
 * loads a fresh copy), its slot reclaimed by the last put. */
static void drop_unreferenced(struct apb_cache *c, bool all, uint32_t model)
{
	struct apb_chunk *list = NULL, **tail = &list;

	lock(c);
	assert(cache_consistent(c));
	for (uint32_t i = 0; i < c->nslots; i++) {
		struct apb_chunk *ch = &c->chunks[i];

		if (ch->state != CHUNK_READY || (!all && ch->model != model))
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

/* ---- statistics ------------------------------------------------------ */

void apb_cache_reset_stats(struct apb_cache *c)
{
	lock(c);
	c->st.hits = c->st.misses = c->st.evictions = 0;
	c->st.loaded_bytes = c->st.load_errors = 0;
	for (uint32_t m = 0; m < c->model_count; m++) {
		c->models[m].hits = c->models[m].misses = 0;
		c->models[m].evictions = 0;
	}
	unlock(c);
}

void apb_cache_stats(struct apb_cache *c, struct apb_cache_stats *out)
{
	lock(c);
	*out = c->st;
	out->budget_bytes = (uint64_t)c->nslots * c->chunk_size;
	out->used_bytes = (uint64_t)c->used_slots * c->chunk_size;
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

/* ---- lifetime -------------------------------------------------------- */

static int config_check(const struct apb_cache_config *cfg)
{
	if (!cfg || !cfg->load)
		return -EINVAL;
	if (cfg->chunk_size < SLOT_ALIGN || cfg->chunk_size % SLOT_ALIGN != 0)
		return -EINVAL;
	if (cfg->budget_bytes < cfg->chunk_size)
		return -EINVAL;
	if (cfg->budget_bytes / cfg->chunk_size > MAX_SLOTS)
		return -EINVAL;
	if (cfg->policy != APB_EVICT_LRU && cfg->policy != APB_EVICT_LFU)
		return -EINVAL;
	return 0;
}

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 1;

	while (p < n)
		p <<= 1;
	return p;
}

/* Allocate the tables; the caller frees on failure. */
static int cache_alloc(struct apb_cache *c, enum apb_eviction policy)
{
	void *region;
	int rc;

	region = mmap(NULL, c->region_bytes, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED)
		return -ENOMEM;
	c->region = region;
	c->chunks = calloc(c->nslots, sizeof(*c->chunks));
	c->buckets = calloc((size_t)c->bucket_mask + 1, sizeof(*c->buckets));
	c->free_slots = calloc(c->nslots, sizeof(*c->free_slots));
	c->models = calloc(c->model_count ? c->model_count : 1,
			   sizeof(*c->models));
	if (!c->chunks || !c->buckets || !c->free_slots || !c->models)
		return -ENOMEM;
	rc = apb_evict_new(policy, c->nslots, &c->evictable);
	if (rc)
		return rc;

	for (uint32_t i = 0; i < c->nslots; i++) {
		c->chunks[i].data = c->region + (size_t)i * c->chunk_size;
		c->chunks[i].state = CHUNK_FREE;
		/* Lowest slot on top: first loads fill the region in order. */
		c->free_slots[i] = c->nslots - 1 - i;
	}
	c->nfree = c->nslots;
	return 0;
}

static int cache_sync_init(struct apb_cache *c)
{
	int rc = pthread_mutex_init(&c->mu, NULL);

	if (rc)
		return -rc;
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
	pthread_mutex_destroy(&c->mu);
	return -rc;
}

static void cache_release(struct apb_cache *c)
{
	if (c->region)
		munmap(c->region, c->region_bytes);
	free(c->chunks);
	free(c->buckets);
	free(c->free_slots);
	free(c->models);
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
	c->model_count = cfg->model_count;
	c->bucket_mask = pow2_at_least(2 * c->nslots) - 1;
	c->load = cfg->load;
	c->load_ctx = cfg->load_ctx;
	c->region_bytes = (size_t)c->nslots * c->chunk_size;

	rc = cache_alloc(c, cfg->policy);
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
	for (uint32_t i = 0; i < c->nslots; i++)
		assert(c->chunks[i].refs == 0);
	unlock(c);
	pthread_cond_destroy(&c->load_cv);
	pthread_cond_destroy(&c->slot_cv);
	pthread_mutex_destroy(&c->mu);
	cache_release(c);
}
