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
 * the chunk; bookkeeping for frequency and auto's recency), plus init for
 * a chunk about to be loaded and forget for one that leaves the cache
 * other than as a victim (auto's history). A chunk an unpin inserts was read (by the pin at least), so LFU
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
 * AUTO
 *
 * auto is LIRS (Jiang and Zhang, "LIRS: an efficient low inter-reference
 * recency set replacement policy", SIGMETRICS 2002) with the size of its
 * two parts set by feedback, as CLOCK-Pro (Jiang, Chen and Zhang, USENIX
 * 2005) sets them, and a fill rule of its own. It exists for the model
 * that is larger than the budget and read in a loop, once per token or
 * forward pass: LRU evicts each chunk just before the loop comes back to
 * it and LFU-DA does no better, so every pass reads the whole model again.
 * Belady's OPT keeps (budget - 1) chunks of the loop and hits them every
 * pass; auto keeps all but Q's few (and a readahead window) and does the
 * same.
 *
 * A chunk's recency is the number of distinct chunks used since its last
 * use; its reuse distance (IRR) the number between its last two uses.
 * Chunks with a small reuse distance are LIR and stay resident; the others
 * are HIR, and only a few of them (Q) are resident. The victim is always
 * Q's oldest. What a chunk is comes from one recency-ordered stack, S:
 * every LIR chunk and the HIR chunks (resident ones, and ghosts: evicted
 * ones remembered by key) used more recently than the oldest LIR chunk,
 * which is always S's bottom (pruning removes the HIR entries below it).
 * A HIR chunk used again while it is in S has a reuse distance smaller
 * than the recency of the bottom LIR chunk: it becomes LIR, and, when the
 * LIR set is at its target, the bottom LIR chunk becomes HIR (on Q) in
 * its place. On a loop larger than the cache nothing is ever used again
 * while in S (the whole loop runs between two uses), so the LIR set is
 * the same chunks pass after pass and hits every pass; Q cycles through
 * the rest. Many small models with skewed popularity make
 * their popular chunks LIR, which is what LFU keeps; a stream read once
 * stays HIR and pushes no LIR chunk out.
 *
 * Q keeps at least hir_min slots: 1% of them, but at least one run
 * (APB_CACHE_RUN_MAX chunks, what one miss loads at once: a sequential
 * reader's misses would else take most of their slots from the LIR set),
 * and at most a quarter of a tiny cache. The LIR target, lir_max, moves
 * between 1 and lir_cap (the slots less hir_min): a HIR chunk reused while
 * in S - resident on Q or a ghost - says a larger Q would have kept it
 * (-1); a demoted LIR chunk used again after its eviction says the LIR set
 * was too small (+1); a HIR entry leaving S unused (pruned, or its ghost
 * forgotten) says Q's slots served nothing (+1 every
 * AUTO_EXPIRIES_PER_SLOT, but only into room Q has beyond hir_min; else a
 * loop read with readahead, whose window the LIR set made room for, would
 * take the room back at every expiry and lose it to the next prefetch
 * again, churning its retained part). So a working set that
 * moves (a recency-friendly load, where plain LIRS needs two misses per
 * new chunk) shrinks the LIR set to what Q needs, and a loop, which reuses
 * nothing within S, keeps it at lir_cap. A first use becomes LIR without
 * a ghost only while there are free slots and the LIR set is below its
 * target (filling, as at mount or after clear); once the slots are full
 * a new chunk is HIR whatever the target, else every expiry would let one
 * more chunk of a loop into the LIR set and push its oldest out: LRU.
 *
 * The set holds what is evictable, but LIRS follows every resident chunk:
 * a chunk a get holds (or a pinned one) keeps its place in S and its
 * status; remove and insert only take it off and put it back on its list
 * (Q for HIR, the LIR list for LIR). When Q is empty - pins, unread
 * prefetches or held chunks took the room the LIR set left for it - the
 * victim is the LIR chunk released last (in a loop, the one needed last;
 * the one released longest ago is the one needed next, and evicting it
 * sent readahead after it at once, evicting the next: through the mount a
 * 4x loop with prefetch kept 0.66 of what OPT saves that way, 0.94 this
 * way). The target stays where it is: the LIR set lends the slot. A
 * prefetch (pop_warm_victim) may take at most prefetch_lir LIR chunks
 * (an eighth of the slots): readahead gets its window, the retained part
 * of a loop stays, and past that the prefetch gets no slot. A demand miss takes Q's
 * head even before the cold list (COLD CHUNKS): Q's chunks were read and
 * judged not worth keeping, while an unread prefetch is what a sequential
 * reader asked for next; evicting it first wasted up to a fifth of a
 * loop's prefetches through the mount.
 *
 * LIRS judges a chunk by its last reuse distance alone, so a popular
 * chunk with one long gap would be demoted like a chunk used twice by
 * chance. The bottom LIR chunk therefore gets a second chance if it was
 * used at least AUTO_SECOND_CHANCE_USES times since its load: back to S's
 * top with its count halved (at most AUTO_SECOND_CHANCES per demotion).
 * On skewed popularity this is worth about 2 points of hit rate (docs/
 * PERFORMANCE.md, "Choosing auto"); a pure loop demotes nothing.
 *
 * Ghosts live in a fixed pool of cap / 2 entries (a table by key and a
 * FIFO); with all in use the oldest is forgotten. More ghosts remember
 * more, and cost hits: a loop mixed with other traffic keeps old chunks of
 * the other traffic at S's bottom, the loop's own ghosts then live a whole
 * pass, and each reuse of one would push out the retained chunk the loop
 * needs next (measured: 1.5 x cap ghosts lost a quarter of the loop+zipf
 * trace's hits). A chunk that clear, evict_model or a failed load drops is
 * forgotten (forget), without a ghost. Every operation is O(1), pruning
 * amortized (an entry leaves S once per time it entered) and a demotion
 * at most AUTO_SECOND_CHANCES steps. Memory: the node's auto_ fields (in
 * a union with LFU's) and, per slot, half a ghost (64 bytes each) and
 * about one bucket pointer. apb_evict_consistent() checks the
 * invariants: S's bottom is LIR; every LIR chunk is in S; Q holds exactly
 * the evictable HIR chunks and the LIR list the evictable LIR ones; every
 * ghost in S is found by its key; lir <= lir_max <= lir_cap.
 *
 * COLD CHUNKS
 *
 * A chunk loaded by a prefetch enters the set before anyone has read it.
 * Inserted like a released chunk it would rank as the most recently used
 * (LRU) or as a chunk a reader just missed on (LFU, F = 1), above the
 * least valuable chunks that readers did use: a readahead window nobody
 * reads, or a wrong guess of which model comes next, would push the working
 * set out and leave itself behind. So it enters cold (insert_cold): on the
 * cold list, which pop_victim empties before it looks at the policy at all
 * (under auto, after Q: AUTO).
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
#include <stddef.h>
#include <stdlib.h>

struct evict_ops {
	void (*init)(struct apb_evict *e, struct apb_evict_node *n);
	void (*insert)(struct apb_evict *e, struct apb_evict_node *n);
	void (*remove)(struct apb_evict *e, struct apb_evict_node *n);
	struct apb_evict_node *(*pop_victim)(struct apb_evict *e,
					     bool for_prefetch);
	void (*touch)(struct apb_evict *e, struct apb_evict_node *n);
	void (*forget)(struct apb_evict *e, struct apb_evict_node *n);
};

/* An intrusive doubly linked list through the nodes' prev/next. */
struct node_list {
	struct apb_evict_node *head, *tail;
};

/* An evicted chunk that auto still remembers (AUTO above): a
 * non-resident HIR entry of S, or a demoted LIR chunk's, outside S. */
struct ghost {
	struct apb_evict_link s;          /* first: a link is its ghost */
	struct ghost *older, *newer;      /* the ghosts by creation */
	struct ghost *hash_next;          /* bucket chain; free list */
	uint64_t index;
	uint32_t model;
	bool in_s;                        /* else: a demoted LIR chunk's */
};

struct apb_evict {
	/* Immutable after apb_evict_new(). */
	const struct evict_ops *ops;
	uint32_t cap;                     /* most nodes the set can hold */
	uint32_t lir_cap;                 /* auto: most LIR chunks */
	uint32_t hir_min;                 /* auto: HIR slots the LIR set leaves */
	uint32_t ghost_mask;              /* auto: buckets - 1 */
	uint32_t prefetch_lir;            /* auto: LIR slots prefetch may take */

	/* Everything below: the caller's lock (cache mu). */
	struct node_list cold;            /* cold nodes, head = next victim */
	uint32_t ncold;                   /* nodes on the cold list */
	uint32_t len;                     /* LRU: list length; LFU: heap length */
	struct node_list lru;             /* LRU: head least recently released */
	struct apb_evict_node **heap;     /* LFU: [cap] min-heap on (key, tick) */
	uint64_t inflation;               /* LFU: L, key of the last victim */
	uint64_t tick;                    /* LFU: insert counter */

	/* auto (len: Q's and the LIR list's nodes) */
	struct apb_evict_link *s_bottom, *s_top; /* the stack S */
	struct node_list q;               /* evictable HIR, head = victim */
	struct node_list lirs;            /* evictable LIR, head = released
					   * longest ago */
	uint32_t nq;                      /* Q's nodes; the LIR list has the
					   * rest of len */
	uint32_t lir;                     /* LIR chunks, evictable or not */
	uint32_t lir_max;                 /* the LIR target, 1 .. lir_cap */
	uint32_t tracked;                 /* LIR and HIR chunks (resident) */
	uint32_t expired;                 /* HIR expiries toward a slot */
	uint64_t lir_evictions;           /* victims taken from the LIR set */
	struct ghost *ghosts;             /* the pool, ghost_cap of them */
	struct ghost **ghost_buckets;     /* [ghost_mask + 1] */
	struct ghost *ghost_free;         /* released ones, through hash_next */
	uint32_t ghost_cap;               /* cap / 2, at least 1 */
	uint32_t ghost_fresh;             /* ghosts[ghost_fresh ..] never used:
					   * untouched, so a large cache pays
					   * for the ghosts it makes */
	struct ghost *ghost_oldest, *ghost_newest;
	uint32_t nghosts;
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

static struct apb_evict_node *lru_pop_victim(struct apb_evict *e,
					     bool for_prefetch)
{
	(void)for_prefetch; /* unread prefetches are cold, not here */
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

static struct apb_evict_node *lfu_pop_victim(struct apb_evict *e,
					     bool for_prefetch)
{
	struct apb_evict_node *victim;

	(void)for_prefetch;
	if (e->len == 0)
		return NULL;
	victim = e->heap[0];
	assert(victim->lfu_key >= e->inflation);
	lfu_remove(e, victim);
	e->inflation = victim->lfu_key;
	return victim;
}

/* ---- auto: LIRS with an adaptive LIR set ----------------------------- */

enum { AUTO_UNTRACKED = 0, AUTO_LIR = 1, AUTO_HIR = 2 };

/* HIR chunks that leave S unused for each slot the LIR set takes back. */
#define AUTO_EXPIRIES_PER_SLOT 4u

/* A bottom LIR chunk used this often since its load gets a second chance
 * (its uses halved) instead of demotion, at most AUTO_SECOND_CHANCES
 * times per demotion. */
#define AUTO_SECOND_CHANCE_USES 3u
#define AUTO_SECOND_CHANCES 16

static struct apb_evict_node *node_of_s(struct apb_evict_link *l)
{
	assert(!l->ghost);
	return (struct apb_evict_node *)((char *)l -
		offsetof(struct apb_evict_node, auto_s));
}

static struct ghost *ghost_of(struct apb_evict_link *l)
{
	assert(l->ghost);
	return (struct ghost *)l;
}

static void s_push_top(struct apb_evict *e, struct apb_evict_link *l)
{
	l->down = e->s_top;
	l->up = NULL;
	if (e->s_top)
		e->s_top->up = l;
	else
		e->s_bottom = l;
	e->s_top = l;
}

static void s_unlink(struct apb_evict *e, struct apb_evict_link *l)
{
	if (l->down)
		l->down->up = l->up;
	else
		e->s_bottom = l->up;
	if (l->up)
		l->up->down = l->down;
	else
		e->s_top = l->down;
	l->up = l->down = NULL;
}

/* nl, in no stack, takes l's place in S. */
static void s_replace(struct apb_evict *e, struct apb_evict_link *l,
		      struct apb_evict_link *nl)
{
	nl->down = l->down;
	nl->up = l->up;
	if (l->down)
		l->down->up = nl;
	else
		e->s_bottom = nl;
	if (l->up)
		l->up->down = nl;
	else
		e->s_top = nl;
	l->up = l->down = NULL;
}

/* The LIR target moves by one, within 1 .. lir_cap. */
static void auto_retarget(struct apb_evict *e, int delta)
{
	if (delta < 0 && e->lir_max > 1)
		e->lir_max--;
	else if (delta > 0 && e->lir_max < e->lir_cap)
		e->lir_max++;
}

/* A HIR entry left S unused (pruned, or its ghost forgotten). The LIR set
 * grows only into room Q has beyond hir_min: where held chunks and a
 * readahead window keep Q short and the LIR set gave them room
 * (auto_pop_victim), each expiry would take that room back and the next
 * prefetch evict an LIR chunk for it again - a loop's retained part would
 * churn. */
static void auto_hir_expired(struct apb_evict *e)
{
	if (++e->expired < AUTO_EXPIRIES_PER_SLOT)
		return;
	e->expired = 0;
	if (e->lir_max < e->lir + (e->nq > e->hir_min ? e->nq - e->hir_min : 0))
		auto_retarget(e, +1);
}

/* The chain link that points at the ghost of (model, index), or at NULL. */
static struct ghost **ghost_link(struct apb_evict *e, uint32_t model,
				 uint64_t index)
{
	struct ghost **p =
		&e->ghost_buckets[apb_key_hash(model, index) & e->ghost_mask];

	while (*p && ((*p)->model != model || (*p)->index != index))
		p = &(*p)->hash_next;
	return p;
}

/* Forget g: out of S (an expiry, unless the caller says it was reused),
 * the table and the FIFO, onto the free list. */
static void ghost_release(struct apb_evict *e, struct ghost *g, bool reused)
{
	struct ghost **p = ghost_link(e, g->model, g->index);

	assert(*p == g && e->nghosts > 0);
	if (g->in_s) {
		s_unlink(e, &g->s);
		if (!reused)
			auto_hir_expired(e);
	}
	*p = g->hash_next;
	if (g->older)
		g->older->newer = g->newer;
	else
		e->ghost_oldest = g->newer;
	if (g->newer)
		g->newer->older = g->older;
	else
		e->ghost_newest = g->older;
	g->hash_next = e->ghost_free;
	e->ghost_free = g;
	e->nghosts--;
}

/* The victim n leaves a ghost: in its place in S, or, for a demoted LIR
 * chunk (no longer in S), outside S. With every ghost in use the oldest
 * is forgotten first. */
static void ghost_make(struct apb_evict *e, struct apb_evict_node *n)
{
	struct ghost *g;
	struct ghost **p;

	if (!e->ghost_free && e->ghost_fresh < e->ghost_cap) {
		g = &e->ghosts[e->ghost_fresh++];
	} else {
		if (!e->ghost_free)
			ghost_release(e, e->ghost_oldest, false);
		g = e->ghost_free;
		e->ghost_free = g->hash_next;
	}
	g->model = n->model;
	g->index = n->index;
	g->s.ghost = true;
	g->in_s = n->auto_in_s;
	p = ghost_link(e, g->model, g->index);
	assert(!*p); /* one life at a time: a resident chunk has no ghost */
	g->hash_next = NULL;
	*p = g;
	g->older = e->ghost_newest;
	g->newer = NULL;
	if (e->ghost_newest)
		e->ghost_newest->newer = g;
	else
		e->ghost_oldest = g;
	e->ghost_newest = g;
	e->nghosts++;
	if (g->in_s)
		s_replace(e, &n->auto_s, &g->s);
	else
		g->s.up = g->s.down = NULL;
}

/* Stack pruning: S's bottom is always an LIR chunk. A HIR entry below the
 * lowest LIR one is older than every LIR chunk's last use, so a new use
 * could not make it LIR: a ghost is forgotten, a resident HIR chunk only
 * leaves S (it stays on Q). Amortized O(1): an entry leaves S once per
 * entry. */
static void auto_prune(struct apb_evict *e)
{
	struct apb_evict_link *l;

	while ((l = e->s_bottom) &&
	       (l->ghost || node_of_s(l)->auto_status != AUTO_LIR)) {
		if (l->ghost) {
			ghost_release(e, ghost_of(l), false);
		} else {
			s_unlink(e, l);
			node_of_s(l)->auto_in_s = false;
			auto_hir_expired(e);
		}
	}
}

/* The LIR chunk at S's bottom becomes HIR and leaves S; if evictable it
 * moves from the LIR list to Q's tail. A bottom chunk used often goes back
 * to the top instead, its uses halved: recency alone judges a chunk by its
 * last reuse distance, and a popular chunk with one long gap would go. */
static void auto_demote_bottom(struct apb_evict *e)
{
	struct apb_evict_node *b;

	auto_prune(e);
	b = node_of_s(e->s_bottom);
	for (int i = 0; i < AUTO_SECOND_CHANCES &&
			b->auto_uses >= AUTO_SECOND_CHANCE_USES; i++) {
		b->auto_uses /= 2;
		s_unlink(e, &b->auto_s);
		s_push_top(e, &b->auto_s);
		auto_prune(e);
		b = node_of_s(e->s_bottom);
	}
	assert(b->auto_status == AUTO_LIR && e->lir > 0);
	b->auto_status = AUTO_HIR;
	b->auto_demoted = true;
	e->lir--;
	s_unlink(e, &b->auto_s);
	b->auto_in_s = false;
	if (b->auto_listed) {
		list_remove(&e->lirs, b);
		list_push_tail(&e->q, b);
		e->nq++;
	}
	auto_prune(e);
}

/* n, out of S, becomes LIR at S's top; past lir_max, the bottom LIR
 * chunks give way. */
static void auto_promote(struct apb_evict *e, struct apb_evict_node *n)
{
	n->auto_status = AUTO_LIR;
	n->auto_demoted = false;
	n->auto_in_s = true;
	s_push_top(e, &n->auto_s);
	e->lir++;
	while (e->lir > e->lir_max)
		auto_demote_bottom(e);
}

static void auto_init(struct apb_evict *e, struct apb_evict_node *n)
{
	(void)e;
	assert(n->auto_status == AUTO_UNTRACKED && !n->auto_in_s &&
	       !n->auto_listed && !n->auto_demoted);
}

/* The first use of n since it was loaded. */
static void auto_first_use(struct apb_evict *e, struct apb_evict_node *n)
{
	struct ghost *g = *ghost_link(e, n->model, n->index);

	e->tracked++;
	if (g) {
		/* Evicted while S held it: reused within the LIR set's
		 * recency, and a larger Q would have kept it. Demoted from
		 * LIR, then evicted: the LIR set was too small for it. */
		auto_retarget(e, g->in_s ? -1 : +1);
		ghost_release(e, g, true);
		auto_promote(e, n);
	} else if (e->lir < e->lir_max && e->tracked + e->ncold < e->cap) {
		auto_promote(e, n); /* filling: free slots, LIR set not full */
	} else {
		n->auto_status = AUTO_HIR;
		n->auto_in_s = true;
		s_push_top(e, &n->auto_s);
	}
}

/* A use (a get). A get holds n, so it is in no list of the set. */
static void auto_touch(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(!n->auto_listed && !n->cold);
	if (n->auto_status == AUTO_UNTRACKED)
		n->auto_uses = 0;
	if (n->auto_uses < UINT16_MAX)
		n->auto_uses++;
	if (n->auto_status == AUTO_UNTRACKED) {
		auto_first_use(e, n);
	} else if (n->auto_status == AUTO_LIR) {
		s_unlink(e, &n->auto_s);
		s_push_top(e, &n->auto_s);
	} else if (n->auto_in_s) { /* HIR, reused within the LIR recency */
		auto_retarget(e, -1);
		s_unlink(e, &n->auto_s);
		auto_promote(e, n);
	} else {
		n->auto_in_s = true;
		s_push_top(e, &n->auto_s);
	}
	auto_prune(e);
}

static void auto_insert(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(!n->auto_listed);
	if (n->auto_status == AUTO_UNTRACKED) { /* never used: not in S */
		n->auto_status = AUTO_HIR;
		e->tracked++;
	}
	n->auto_listed = true;
	if (n->auto_status == AUTO_LIR) {
		list_push_tail(&e->lirs, n);
	} else {
		list_push_tail(&e->q, n);
		e->nq++;
	}
	e->len++;
}

static void auto_remove(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(n->auto_listed && e->len > 0);
	if (n->auto_status == AUTO_LIR) {
		list_remove(&e->lirs, n);
	} else {
		list_remove(&e->q, n);
		e->nq--;
	}
	n->auto_listed = false;
	e->len--;
}

/* Q's head. With Q empty (pins, unread prefetches or held chunks took the
 * room the LIR set left for it), the LIR chunk released last: in a loop
 * the one read last is the one needed last, while the one released
 * longest ago is the one needed next - evicting it, readahead fetched it
 * again at once and took the next one's slot for it, down the whole
 * retained part. The target stays: the LIR set lends the slot. A prefetch
 * may take at most prefetch_lir LIR chunks that way (an eighth of the
 * slots); past that it gets no victim. */
static struct apb_evict_node *auto_pop_victim(struct apb_evict *e,
					      bool for_prefetch)
{
	struct apb_evict_node *v = e->q.head;

	if (v) {
		auto_remove(e, v);
	} else if ((v = e->lirs.tail) &&
		   (!for_prefetch || e->lir + e->prefetch_lir > e->lir_cap)) {
		auto_remove(e, v);
		e->lir--;
		e->lir_evictions++;
	} else {
		return NULL;
	}
	e->tracked--;
	if (v->auto_in_s || v->auto_demoted)
		ghost_make(e, v);
	v->auto_in_s = false;
	v->auto_demoted = false;
	v->auto_status = AUTO_UNTRACKED;
	auto_prune(e);
	return v;
}

static void auto_forget(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(!n->auto_listed);
	if (n->auto_status == AUTO_UNTRACKED)
		return;
	e->tracked--;
	if (n->auto_status == AUTO_LIR) {
		assert(e->lir > 0);
		e->lir--;
	}
	if (n->auto_in_s)
		s_unlink(e, &n->auto_s);
	n->auto_in_s = false;
	n->auto_demoted = false;
	n->auto_status = AUTO_UNTRACKED;
	auto_prune(e);
}

static const struct evict_ops lru_ops = {
	lru_ignore, lru_insert, lru_remove, lru_pop_victim, lru_ignore,
	lru_ignore,
};

static const struct evict_ops lfu_ops = {
	lfu_init, lfu_insert, lfu_remove, lfu_pop_victim, lfu_touch,
	lru_ignore,
};

static const struct evict_ops auto_ops = {
	auto_init, auto_insert, auto_remove, auto_pop_victim, auto_touch,
	auto_forget,
};

/* ---- the set, whatever the policy ------------------------------------ */

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 1;

	while (p < n)
		p <<= 1;
	return p;
}

/* auto's ghosts, half as many as slots, and its constants. */
static int auto_alloc(struct apb_evict *e)
{
	uint32_t nghosts = e->cap / 2 > 1 ? e->cap / 2 : 1;

	/* Q holds at least one run (what one miss loads at once), else each
	 * miss of a sequential reader would take most of its slots from the
	 * LIR set; 1% of large caches, a quarter of tiny ones at most. */
	e->hir_min = e->cap / 100 > APB_CACHE_RUN_MAX ? e->cap / 100
						      : APB_CACHE_RUN_MAX;
	if (e->hir_min > e->cap / 4)
		e->hir_min = e->cap / 4 > 1 ? e->cap / 4 : 1;
	e->lir_cap = e->cap > e->hir_min ? e->cap - e->hir_min : 1;
	e->lir_max = e->lir_cap;
	e->prefetch_lir = e->cap / 8 > 1 ? e->cap / 8 : 1;
	e->ghost_mask = pow2_at_least(2 * nghosts) - 1;
	e->ghosts = calloc(nghosts, sizeof(*e->ghosts));
	e->ghost_buckets = calloc((size_t)e->ghost_mask + 1,
				  sizeof(*e->ghost_buckets));
	if (!e->ghosts || !e->ghost_buckets)
		return -ENOMEM;
	e->ghost_cap = nghosts;
	return 0;
}

int apb_evict_new(enum apb_eviction policy, uint32_t cap,
		  struct apb_evict **out)
{
	struct apb_evict *e;
	int rc = -ENOMEM;

	assert(cap > 0 && cap <= APB_CACHE_MAX_SLOTS);
	*out = NULL;
	if (policy != APB_EVICT_LRU && policy != APB_EVICT_LFU &&
	    policy != APB_EVICT_AUTO)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->cap = cap;
	switch (policy) {
	case APB_EVICT_LFU:
		e->ops = &lfu_ops;
		e->heap = calloc(cap, sizeof(*e->heap));
		rc = e->heap ? 0 : -ENOMEM;
		break;
	case APB_EVICT_AUTO:
		e->ops = &auto_ops;
		rc = auto_alloc(e);
		break;
	default:
		e->ops = &lru_ops;
		rc = 0;
	}
	if (rc) {
		apb_evict_free(e);
		return rc;
	}
	*out = e;
	return 0;
}

void apb_evict_free(struct apb_evict *e)
{
	if (!e)
		return;
	free(e->heap);
	free(e->ghosts);
	free(e->ghost_buckets);
	free(e);
}

void apb_evict_node_init(struct apb_evict *e, struct apb_evict_node *n,
			 uint32_t model, uint64_t index)
{
	n->prev = n->next = NULL;
	n->cold = false;
	if (e->ops == &auto_ops) {
		n->model = model;
		n->index = index;
	}
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
	if (e->ops == &lfu_ops)
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

void apb_evict_forget(struct apb_evict *e, struct apb_evict_node *n)
{
	assert(!n->cold);
	e->ops->forget(e, n);
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

	/* auto: Q's chunks were read and judged not worth keeping; an unread
	 * prefetch is what a reader asked for next (COLD CHUNKS). */
	if (e->ops == &auto_ops && e->nq > 0)
		return e->ops->pop_victim(e, false);

	if (!victim)
		return e->ops->pop_victim(e, false);
	cold_remove(e, victim); /* LFU: its K is L; L stays */
	return victim;
}

struct apb_evict_node *apb_evict_pop_warm_victim(struct apb_evict *e)
{
	return e->ops->pop_victim(e, true);
}

uint32_t apb_evict_count(const struct apb_evict *e)
{
	return e->ncold + e->len;
}

uint32_t apb_evict_cold_count(const struct apb_evict *e)
{
	return e->ncold;
}

void apb_evict_auto_stats(const struct apb_evict *e,
			  struct apb_evict_auto_stats *out)
{
	*out = (struct apb_evict_auto_stats){0};
	if (e->ops != &auto_ops)
		return;
	out->lir = e->lir;
	out->lir_max = e->lir_max;
	out->hir_queued = e->nq;
	out->ghosts = e->nghosts;
	out->lir_evictions = e->lir_evictions;
}

/* Count a list's nodes, checking each is listed and of the status given
 * (0: any; the cold list and LRU's). */
static bool list_check(const struct node_list *l, uint8_t status, bool cold,
		       uint32_t *count)
{
	const struct apb_evict_node *prev = NULL;

	*count = 0;
	for (const struct apb_evict_node *n = l->head; n; n = n->next) {
		if (n->prev != prev || n->cold != cold ||
		    (status && (!n->auto_listed || n->auto_status != status)))
			return false;
		prev = n;
		++*count;
	}
	return l->tail == prev;
}

static bool auto_consistent(const struct apb_evict *e)
{
	const struct apb_evict_link *down = NULL;
	uint32_t lir = 0, ghosts = 0, fifo = 0, in_s = 0, nq, nlirs;

	if (!list_check(&e->q, AUTO_HIR, false, &nq) || nq != e->nq ||
	    !list_check(&e->lirs, AUTO_LIR, false, &nlirs) ||
	    e->len != nq + nlirs)
		return false;
	/* S: bottom LIR, every LIR chunk in it, ghosts findable. */
	if (e->s_bottom && (e->s_bottom->ghost ||
	    node_of_s(e->s_bottom)->auto_status != AUTO_LIR))
		return false;
	for (const struct apb_evict_link *l = e->s_bottom; l; l = l->up) {
		if (l->down != down)
			return false;
		down = l;
		if (l->ghost) {
			const struct ghost *g = (const struct ghost *)l;
			struct ghost *const *p = ghost_link(
				(struct apb_evict *)e, g->model, g->index);

			if (*p != g)
				return false;
			ghosts++;
		} else {
			const struct apb_evict_node *n = node_of_s(
				(struct apb_evict_link *)l);

			if (!n->auto_in_s || n->auto_status == AUTO_UNTRACKED)
				return false;
			lir += n->auto_status == AUTO_LIR;
		}
	}
	for (const struct ghost *g = e->ghost_oldest; g; g = g->newer) {
		fifo++;
		in_s += g->in_s;
	}
	return e->s_top == down && lir == e->lir && ghosts == in_s &&
	       fifo == e->nghosts &&
	       e->lir <= e->lir_max && e->lir_max >= 1 &&
	       e->lir_max <= e->lir_cap;
}

bool apb_evict_consistent(const struct apb_evict *e)
{
	uint32_t ncold, nlru;

	if (!list_check(&e->cold, 0, true, &ncold) || ncold != e->ncold)
		return false;
	if (e->ops == &lru_ops)
		return list_check(&e->lru, 0, false, &nlru) && nlru == e->len;
	if (e->ops == &auto_ops)
		return auto_consistent(e);
	for (uint32_t i = 0; i < e->len; i++) {
		uint32_t l = 2 * i + 1, r = l + 1;

		if (e->heap[i]->heap_pos != i ||
		    (l < e->len && lfu_before(e->heap[l], e->heap[i])) ||
		    (r < e->len && lfu_before(e->heap[r], e->heap[i])))
			return false;
	}
	return true;
}
