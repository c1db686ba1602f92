/*
 * evict.c - the eviction policies: which unreferenced chunk the cache gives
 * up when it needs a slot.
 *
 * EVICTION POLICY
 *
 * A policy is an "evictable set" holding exactly the READY chunks with
 * refs == 0 that are not pinned (cache.c keeps that true; its PINNING
 * section says why pinned chunks stay out), behind four operations (struct
 * evict_ops): insert (a put took refs 1 -> 0, or a chunk got evictable
 * otherwise: an unpin), remove (a get took refs 0 -> 1, a pin took the
 * chunk, or clear/evict_model drops it), pop_victim (take the chunk to
 * evict for room, NULL if the set is empty) and touch (a get referenced
 * the chunk; bookkeeping for frequency), plus init for a chunk about to be
 * loaded. A chunk an unpin inserts was read (by the pin at least), so LFU
 * gives it F >= 1 like any put. The set sees each chunk only as the struct
 * apb_evict_node embedded in it (evict.h says why). In front of the policy
 * sits the cold list (COLD CHUNKS below), the same for every policy; the
 * wrappers at the bottom route each call to one or the other.
 *
 * LRU is an intrusive doubly linked list: insert appends at the MRU tail, the
 * victim is the head. Every operation is O(1). "Recent" means "released
 * recently": a chunk held by a long read counts as used until its put.
 *
 * LFU is LFU with dynamic aging (LFU-DA; Arlitt, Cherkasova, Dilley et al.,
 * "Evaluating content management techniques for web proxy caches", 2000).
 * Each chunk counts its gets in freq (F): 0 when loaded, +1 for every get,
 * the one that loaded it included. The set keeps an inflation value L, the
 * priority of the last chunk evicted for room. A chunk entering the set gets
 * priority K = F + L; the victim is the least K, ties going to the chunk
 * that entered the set first (tick). The set is a binary min-heap of node
 * pointers, each node remembering its heap position, so insert, remove and
 * pop are O(log n). A chunk loaded by a get has F = 1, K = 1 + L.
 *
 * Why LFU-DA rather than plain LFU or Redis' counters: plain LFU never
 * forgets; a chunk read a thousand times while a model warmed up would squat
 * in its slot forever. Redis (its own src/evict.c) forgets by decaying each
 * key's 8-bit logarithmic counter by the minutes it sat idle, lazily, when
 * the key is touched or sampled. That works for Redis because it evicts by
 * sampling a few random keys and keeps no order among them. An exact victim
 * needs an ordered structure, and time decay changes every idle key's
 * priority without anyone touching it: the heap would go stale, and keeping
 * it right takes a periodic O(n) pass that re-decays and re-heaps every
 * chunk. LFU-DA ages the other way round: it never lowers old priorities, it
 * raises the base that new ones start from. Every eviction for room sets L to
 * the victim's K, so chunks loaded or released later enter above it, and a
 * formerly hot chunk whose K was fixed long ago is overtaken and evicted once
 * L reaches it. Relative order of the chunks in the heap never changes, so
 * the heap stays valid, with no clock, timer or decay pass.
 *
 * L never decreases: every chunk in the heap has K >= L (a chunk enters the
 * heap only through a put, after at least one get, so with K = F + L,
 * F >= 1, and L only rises to the minimum K), which an assert() checks on
 * every pop. Only evictions for room from the heap raise L; clear and
 * evict_model are requests, not memory pressure, and a cold victim's K is
 * L already.
 *
 * COLD CHUNKS
 *
 * A chunk loaded by a prefetch enters the set before anyone has read it.
 * Inserted like a released chunk it would rank as the most recently used
 * (LRU) or as a chunk a reader just missed on (LFU, F = 1), above the
 * least valuable chunks that readers did use: a readahead window nobody
 * reads, or a wrong guess of which model comes next, would push the working
 * set out and leave itself behind. So it enters cold (insert_cold): on the
 * cold list, which pop_victim empties before it looks at the policy at all.
 * That is the LRU list's victim end, and for LFU-DA F = 0, K = L: below
 * every used chunk (K >= L), and first even on a tie. A demand miss thus
 * evicts an unread prefetched chunk before any chunk that was read, and an
 * unused prefetch holds its slot only until the next miss needs one. Once
 * a get reads it, it leaves the set (remove) and its put inserts it like
 * any other chunk (F = 1 for LFU, as if the get had loaded it).
 *
 * The prefetch itself takes its slot with pop_warm_victim, which skips the
 * cold list: were it to take the policy's victim, a full cache would hand
 * each prefetch the previous prefetch's slot and a readahead window would
 * evict itself chunk by chunk. Each prefetch may displace one used chunk
 * (the one the next miss would take anyway); the cache bounds how many
 * unread prefetched chunks exist at once (its prefetch share), and so how
 * much of the working set prefetching can displace.
 *
 * The cold list is LIFO: a push goes to its head and the victim is its
 * head. The newest prefetch is the farthest ahead of a sequential reader,
 * the one it needs last; the oldest is the next it reads.
 *
 * LOCKING
 *
 * None here: the cache calls every function with its mutex held.
 */
#include "evict.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

struct evict_ops {
	void (*init)(struct apb_evict *e, struct apb_evict_node *n);
	void (*insert)(struct apb_evict *e, struct apb_evict_node *n);
	void (*remove)(struct apb_evict *e, struct apb_evict_node *n);
	struct apb_evict_node *(*pop_victim)(struct apb_evict *e);
	void (*touch)(struct apb_evict *e, struct apb_evict_node *n);
};

/* An intrusive doubly linked list through the nodes' prev/next. */
struct node_list {
	struct apb_evict_node *head, *tail;
};

struct apb_evict {
	/* Immutable after apb_evict_new(). */
	const struct evict_ops *ops;
	uint32_t cap;                     /* most nodes the set can hold */

	/* Everything below: the caller's lock (cache mu). */
	struct node_list cold;            /* cold nodes, head = next victim */
	uint32_t ncold;                   /* nodes on the cold list */
	uint32_t len;                     /* LRU: list length; LFU: heap length */
	struct node_list lru;             /* LRU: head least recently released */
	struct apb_evict_node **heap;     /* LFU: [cap] min-heap on (key, tick) */
	uint64_t inflation;               /* LFU: L, key of the last victim */
	uint64_t tick;                    /* LFU: insert counter */
};

/* ---- lists: the cold list and LRU's ---------------------------------- */

/* Link n in between prev and next (NULL: the list's end). */
static void list_link(struct node_list *l, struct apb_evict_node *prev,
		      struct apb_evict_node *n, struct apb_evict_node *next)
{
	n->prev = prev;
	n->next = next;
	if (prev)
		prev->next = n;
	else
		l->head = n;
	if (next)
		next->prev = n;
	else
		l->tail = n;
}

static void list_push_head(struct node_list *l, struct apb_evict_node *n)
{
	list_link(l, NULL, n, l->head);
}

static void list_push_tail(struct node_list *l, struct apb_evict_node *n)
{
	list_link(l, l->tail, n, NULL);
}

static void list_remove(struct node_list *l, struct apb_evict_node *n)
{
	if (n->prev)
		n->prev->next = n->next;
	else
		l->head = n->next;
	if (n->next)
		n->next->prev = n->prev;
	else
		l->tail = n->prev;
	n->prev = n->next = NULL;
}

/* ---- LRU: a list, head = victim -------------------------------------- */

/* LRU orders by release alone: a fresh chunk or a get changes nothing. */
static void lru_ignore(struct apb_evict *e, struct apb_evict_node *n)
{
	(void)e;
	(void)n;
}

static void lru_insert(struct apb_evict *e, struct apb_evict_node *n)
{
	list_push_tail(&e->lru, n);
	e->len++;
}

static void lru_remove(struct apb_evict *e, struct apb_evict_node *n)
{
	list_remove(&e->lru, n);
	e->len--;
}

static struct apb_evict_node *lru_pop_victim(struct apb_evict *e)
{
	struct apb_evict_node *victim = e->lru.head;

	if (victim)
		lru_remove(e, victim);
	return victim;
}

/* ---- LFU-DA: a min-heap on (key, tick) ------------------------------- */

static void lfu_init(struct apb_evict *e, struct apb_evict_node *n)
{
	(void)e;
	n->lfu_freq = 0;
}

static void lfu_touch(struct apb_evict *e, struct apb_evict_node *n)
{
	(void)e;
	if (n->lfu_freq < UINT64_MAX)
		n->lfu_freq++;
}

static bool lfu_before(const struct apb_evict_node *a,
		       const struct apb_evict_node *b)
{
	if (a->lfu_key != b->lfu_key)
		return a->lfu_key < b->lfu_key;
	return a->lfu_tick < b->lfu_tick;
}

static void heap_place(struct apb_evict *e, uint32_t pos,
		       struct apb_evict_node *n)
{
	e->heap[pos] = n;
	n->heap_pos = pos;
}

static void heap_sift_up(struct apb_evict *e, uint32_t pos)
{
	struct apb_evict_node *n = e->heap[pos];

	while (pos > 0) {
		uint32_t parent = (pos - 1) / 2;

		if (!lfu_before(n, e->heap[parent]))
			break;
		heap_place(e, pos, e->heap[parent]);
		pos = parent;
	}
	heap_place(e, pos, n);
}

static void heap_sift_down(struct apb_evict *e, uint32_t pos)
{
	struct apb_evict_node *n = e->heap[pos];
	uint32_t len = e->len;

	for (;;) {
		uint32_t child = 2 * pos + 1;

		if (child >= len)
			break;
		if (child + 1 < len &&
		    lfu_before(e->heap[child + 1], e->heap[child]))
			child++;
		if (!lfu_before(e->heap[child], n))
			break;
		heap_place(e, pos, e->heap[child]);
		pos = child;
	}
	heap_place(e, pos, n);
}

static void lfu_insert(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(e->len < e->cap);
	assert(n->lfu_freq >= 1); /* read at least once; else it is cold */
	n->lfu_key = n->lfu_freq + e->inflation;
	n->lfu_tick = ++e->tick;
	heap_place(e, e->len++, n);
	heap_sift_up(e, n->heap_pos);
}

static void lfu_remove(struct apb_evict *e, struct apb_evict_node *n)
{
	uint32_t pos = n->heap_pos;
	struct apb_evict_node *last;

	assert(pos < e->len && e->heap[pos] == n);
	last = e->heap[--e->len];
	e->heap[e->len] = NULL;
	if (last == n)
		return;
	/* The last leaf fills the hole and moves up or down, never both. */
	heap_place(e, pos, last);
	heap_sift_up(e, pos);
	heap_sift_down(e, last->heap_pos);
}

static struct apb_evict_node *lfu_pop_victim(struct apb_evict *e)
{
	struct apb_evict_node *victim;

	if (e->len == 0)
		return NULL;
	victim = e->heap[0];
	assert(victim->lfu_key >= e->inflation);
	lfu_remove(e, victim);
	e->inflation = victim->lfu_key;
	return victim;
}

static const struct evict_ops lru_ops = {
	lru_ignore, lru_insert, lru_remove, lru_pop_victim, lru_ignore,
};

static const struct evict_ops lfu_ops = {
	lfu_init, lfu_insert, lfu_remove, lfu_pop_victim, lfu_touch,
};

/* ---- the set, whatever the policy ------------------------------------ */

int apb_evict_new(enum apb_eviction policy, uint32_t cap,
		  struct apb_evict **out)
{
	struct apb_evict *e;

	assert(cap > 0);
	*out = NULL;
	if (policy != APB_EVICT_LRU && policy != APB_EVICT_LFU)
		return -EINVAL; /* auto: not yet */
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->ops = policy == APB_EVICT_LFU ? &lfu_ops : &lru_ops;
	e->cap = cap;
	if (policy == APB_EVICT_LFU) {
		e->heap = calloc(cap, sizeof(*e->heap));
		if (!e->heap) {
			free(e);
			return -ENOMEM;
		}
	}
	*out = e;
	return 0;
}

void apb_evict_free(struct apb_evict *e)
{
	if (!e)
		return;
	free(e->heap);
	free(e);
}

void apb_evict_node_init(struct apb_evict *e, struct apb_evict_node *n)
{
	n->prev = n->next = NULL;
	n->cold = false;
	e->ops->init(e, n);
}

void apb_evict_touch(struct apb_evict *e, struct apb_evict_node *n)
{
	e->ops->touch(e, n);
}

void apb_evict_insert(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(!n->cold && e->ncold + e->len < e->cap);
	e->ops->insert(e, n);
}

void apb_evict_insert_cold(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(!n->cold && e->ncold + e->len < e->cap);
	n->cold = true;
	n->lfu_freq = 0; /* never read: the first get makes F = 1 */
	list_push_head(&e->cold, n);
	e->ncold++;
}

static void cold_remove(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(n->cold && e->ncold > 0);
	list_remove(&e->cold, n);
	e->ncold--;
	n->cold = false;
}

void apb_evict_remove(struct apb_evict *e, struct apb_evict_node *n)
{
	if (n->cold) {
		cold_remove(e, n);
		return;
	}
	assert(e->len > 0);
	e->ops->remove(e, n);
}

struct apb_evict_node *apb_evict_pop_victim(struct apb_evict *e)
{
	struct apb_evict_node *victim = e->cold.head;

	if (!victim)
		return e->ops->pop_victim(e);
	cold_remove(e, victim); /* LFU: its K is L; L stays */
	return victim;
}

struct apb_evict_node *apb_evict_pop_warm_victim(struct apb_evict *e)
{
	return e->ops->pop_victim(e);
}

uint32_t apb_evict_count(const struct apb_evict *e)
{
	return e->ncold + e->len;
}

uint32_t apb_evict_cold_count(const struct apb_evict *e)
{
	return e->ncold;
}
