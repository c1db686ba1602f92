/*
 * learn.c - counts of model opens and of which model follows which
 * (learn.h), and the state file that keeps them across mounts.
 *
 * Tables. For each of the bundle's models, indexed like the bundle:
 *  - opens[m]: how many times m was opened (uint64_t, saturating);
 *  - next[m * APB_LEARN_SUCCESSORS ...]: up to APB_LEARN_SUCCESSORS
 *    {model, count} slots for the models opened right after m. A slot with
 *    count 0 is empty (its model field means nothing); a used slot never
 *    names m itself, and no model appears twice in one table.
 * Both are allocated once by apb_learn_new(): 8 + 8 * 8 = 72 bytes per
 * model, 7.2 MB for 100,000 models. They come from calloc, so the pages of
 * models never opened stay untouched zero pages and cost no memory.
 *
 * Transitions. `last` is the model opened most recently by anyone
 * (UINT32_MAX before the first open). An open of m after a different model
 * counts one transition last -> m; an open of the model that is already
 * `last` counts none. With several readers the transitions interleave;
 * that is the point: what is opened next is what is worth prefetching.
 *
 * Replacement. When a transition's target is not in a full table, it takes
 * the slot of the least counted entry (ties: the highest model index, the
 * one apb_learn_successors() would rank last) and starts at that entry's
 * count + 1, not at 1. This is the Space-Saving algorithm (Metwally,
 * Agrawal, El Abbadi, 2005): every successor that follows a model in more
 * than 1/8 of its transitions is guaranteed a slot, and a count overstates
 * the truth by at most the count it inherited. Starting at 1 would be
 * exact for what it keeps, but once eight successors have counts of 2 or
 * more, a successor that only became common later (a new workload) enters
 * at 1 and is evicted by the next newcomer before it can climb, so the
 * table freezes on the past. For a prefetch hint an overcount is cheap;
 * missing the real successor is not.
 *
 * Saturation. Counts stop at UINT32_MAX (successors) and UINT64_MAX
 * (opens) instead of wrapping, so a long-lived count never turns small.
 *
 * Load orders. orders[m] is model m's learned load order (order.h) or
 * NULL: an immutable, reference-counted array of runs. Replacing one
 * swaps the pointer under mu; readers (apb_learn_order(), saving) take a
 * reference under mu and copy or write it with no lock held, so no order
 * is copied or freed under mu. Orders are in chunks of chunk_size, set
 * once before loading.
 *
 * State file. One JSON object, built and parsed with cJSON:
 *
 *   {"version": 1,
 *    "models": {"NAME": {"opens": N, "next": {"NAME2": COUNT, ...},
 *                        "order": {"chunk_size": CS, "size": BYTES,
 *                                  "runs": [[FIRST, COUNT], ...]}}, ...}}
 *
 * "order" is optional (a file from before orders has none; a daemon from
 * before them ignores the key, as any unknown one, so the version stays
 * 1). Its runs are checked as apb_order_check() does against the size and
 * chunk size the order itself names: COUNT >= 1, within the model, no
 * chunk twice, APB_ORDER_CHUNKS chunks at most; a file that breaks that
 * is not a state file. A checked order replaces the model's (orders are
 * not merged: the file's is the most recent) if its chunk size and model
 * size are this mount's, and is dropped otherwise: with another chunk
 * size its runs name other bytes, and a model of another size is another
 * model under the same name.
 *
 * Models are keyed by name (indexes change when the bundle does) in name
 * order; only models with opens > 0 or a successor are written, and each
 * "next" lists the successors most frequent first. All numbers are
 * integers 0 <= n <= 2^53 - 1 (exact in a double). Loading checks the whole
 * document before it touches a count: version must be 1, "models" an
 * object, each model an object with "opens" a number and "next" an object
 * of numbers; any other key is ignored. Then, under the lock, counts are
 * added to the tables: opens add, successors go in as a transition of
 * weight COUNT would (clamped to UINT32_MAX, same replacement rule). Names
 * not in the bundle, "next" entries naming the model itself and zero
 * counts are skipped. A name given twice in one object adds twice.
 * Files over 64 MiB are refused (-EFBIG) before reading: a real file is
 * at most a few hundred bytes per model. The file is opened so that it
 * cannot block (a FIFO without a writer would) and must be a regular
 * file; an empty one holds no counts, like a missing one. Anything else
 * that fails the checks is "not an apbundlefs state file" (-EINVAL):
 * saving would replace it, so the daemon refuses to mount on it.
 *
 * Saving snapshots the tables under the lock, then builds the document and
 * writes it through atomic.h (temporary file in the same directory, fsync,
 * rename, fsync of the directory) with no lock held.
 *
 * Locking. One mutex, `mu`, protects opens, next, last and the orders
 * pointers. It is held only for table work (no I/O, no allocation, no
 * free); it is the only lock here and no other lock is taken under it.
 */
#include <apbundle/learn.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic.h"
#include "error.h"
#include "json.h"
#include "lock.h"

#define NONE UINT32_MAX
#define STATE_VERSION 1
#define STATE_MAX_BYTES ((off_t)64 << 20)

struct succ {
	uint32_t model;
	uint32_t count; /* 0: empty slot */
};

/* An immutable load order, shared by reference (see "Load orders"). */
struct learned_order {
	atomic_uint refs;
	uint32_t nruns;
	struct apb_order_run runs[];
};

static struct learned_order *order_new(const struct apb_order_run *runs,
				       size_t n)
{
	struct learned_order *o = malloc(sizeof(*o) + n * sizeof(*runs));

	if (!o)
		return NULL;
	atomic_init(&o->refs, 1);
	o->nruns = (uint32_t)n;
	memcpy(o->runs, runs, n * sizeof(*runs));
	return o;
}

static void order_put(struct learned_order *o)
{
	if (o && atomic_fetch_sub(&o->refs, 1) == 1)
		free(o);
}

struct apb_learn {
	const struct apb_bundle *bundle; /* immutable */
	uint32_t count;                  /* immutable: models in bundle */
	struct apb_mutex mu;
	uint64_t *opens;   /* mu: [count] */
	struct succ *next; /* mu: [count * APB_LEARN_SUCCESSORS] */
	uint32_t last;     /* mu: last opened model, NONE before any */
	uint32_t chunk_size;             /* set before loading; 0: no orders */
	struct learned_order **orders;   /* mu: [count], NULL: none */
};

int apb_learn_new(const struct apb_bundle *bundle, struct apb_learn **out)
{
	size_t n = apb_bundle_count(bundle);
	struct apb_learn *l;

	*out = NULL;
	if (n >= NONE)
		return -EOVERFLOW;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->bundle = bundle;
	l->count = (uint32_t)n;
	l->last = NONE;
	/* calloc(0) may return NULL; one extra element keeps NULL an error. */
	l->opens = calloc(n + 1, sizeof(*l->opens));
	l->next = calloc(n * APB_LEARN_SUCCESSORS + 1, sizeof(*l->next));
	l->orders = calloc(n + 1, sizeof(*l->orders));
	if (!l->opens || !l->next || !l->orders ||
	    apb_mutex_init(&l->mu) != 0) {
		free(l->opens);
		free(l->next);
		free(l->orders);
		free(l);
		return -ENOMEM;
	}
	*out = l;
	return 0;
}

void apb_learn_free(struct apb_learn *l)
{
	if (!l)
		return;
	apb_mutex_destroy(&l->mu);
	for (uint32_t m = 0; m < l->count; m++)
		order_put(l->orders[m]);
	free(l->orders);
	free(l->opens);
	free(l->next);
	free(l);
}

static uint32_t add32(uint32_t a, uint32_t b)
{
	return a > UINT32_MAX - b ? UINT32_MAX : a + b;
}

static uint64_t add64(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Does slot a rank after slot b in apb_learn_successors()' order? */
static bool ranks_after(const struct succ *a, const struct succ *b)
{
	return a->count < b->count ||
	       (a->count == b->count && a->model > b->model);
}

/* Count weight more transitions from model `from` to `to` (mu held). */
static void bump(struct apb_learn *l, uint32_t from, uint32_t to,
		 uint32_t weight)
{
	struct succ *t = &l->next[(size_t)from * APB_LEARN_SUCCESSORS];
	struct succ *empty = NULL, *least = NULL;

	apb_assert_held(&l->mu);
	if (from == to || weight == 0)
		return;
	for (int i = 0; i < APB_LEARN_SUCCESSORS; i++) {
		if (t[i].count == 0) {
			if (!empty)
				empty = &t[i];
		} else if (t[i].model == to) {
			t[i].count = add32(t[i].count, weight);
			return;
		} else if (!least || ranks_after(&t[i], least)) {
			least = &t[i];
		}
	}
	if (empty) {
		empty->model = to;
		empty->count = weight;
		return;
	}
	/* Space-Saving: inherit the evicted count (see the file comment). */
	least->model = to;
	least->count = add32(least->count, weight);
}

/* The used slots of table t, most frequent first (ties: lower index). */
static size_t sorted_successors(const struct succ *t,
				struct succ out[APB_LEARN_SUCCESSORS])
{
	size_t n = 0;

	for (int i = 0; i < APB_LEARN_SUCCESSORS; i++)
		if (t[i].count)
			out[n++] = t[i];
	/* Insertion sort: at most eight entries. */
	for (size_t i = 1; i < n; i++) {
		struct succ s = out[i];
		size_t j = i;
		for (; j > 0 && ranks_after(&out[j - 1], &s); j--)
			out[j] = out[j - 1];
		out[j] = s;
	}
	return n;
}

void apb_learn_opened(struct apb_learn *l, uint32_t model)
{
	if (model >= l->count)
		return;
	apb_mutex_lock(&l->mu);
	l->opens[model] = add64(l->opens[model], 1);
	if (l->last != NONE)
		bump(l, l->last, model, 1);
	l->last = model;
	apb_mutex_unlock(&l->mu);
}

size_t apb_learn_successors(struct apb_learn *l, uint32_t model,
			    uint32_t *out, size_t max)
{
	struct succ t[APB_LEARN_SUCCESSORS];
	size_t n;

	if (model >= l->count)
		return 0;
	apb_mutex_lock(&l->mu);
	n = sorted_successors(&l->next[(size_t)model * APB_LEARN_SUCCESSORS], t);
	apb_mutex_unlock(&l->mu);
	if (n > max)
		n = max;
	for (size_t i = 0; i < n; i++)
		out[i] = t[i].model;
	return n;
}

/* Is model a less popular than b (fewer opens; ties: higher index)? */
static bool less_popular(const struct apb_learn *l, uint32_t a, uint32_t b)
{
	return l->opens[a] < l->opens[b] ||
	       (l->opens[a] == l->opens[b] && a > b);
}

/* Restore the min-heap (least popular at the root) below position i. */
static void sift_down(const struct apb_learn *l, uint32_t *h, size_t n,
		      size_t i)
{
	for (;;) {
		size_t c = 2 * i + 1, m = i;
		if (c < n && less_popular(l, h[c], h[m]))
			m = c;
		if (c + 1 < n && less_popular(l, h[c + 1], h[m]))
			m = c + 1;
		if (m == i)
			return;
		uint32_t x = h[i];
		h[i] = h[m];
		h[m] = x;
		i = m;
	}
}

/*
 * Top max by a min-heap kept in out itself: O(models * log max), no
 * allocation, so it cannot fail. Then a heap sort puts the least popular
 * at the end, leaving out most popular first.
 */
size_t apb_learn_popular(struct apb_learn *l, uint32_t *out, size_t max)
{
	size_t n = 0;

	if (max == 0)
		return 0;
	apb_mutex_lock(&l->mu);
	for (uint32_t m = 0; m < l->count; m++) {
		if (l->opens[m] == 0)
			continue;
		if (n < max) {
			/* Sift up. */
			size_t i = n++;
			out[i] = m;
			while (i > 0 && less_popular(l, out[i], out[(i - 1) / 2])) {
				uint32_t x = out[i];
				out[i] = out[(i - 1) / 2];
				out[(i - 1) / 2] = x;
				i = (i - 1) / 2;
			}
		} else if (less_popular(l, out[0], m)) {
			out[0] = m;
			sift_down(l, out, n, 0);
		}
	}
	for (size_t end = n; end > 1; end--) {
		uint32_t x = out[0];
		out[0] = out[end - 1];
		out[end - 1] = x;
		sift_down(l, out, end - 1, 0);
	}
	apb_mutex_unlock(&l->mu);
	return n;
}

uint64_t apb_learn_opens(struct apb_learn *l, uint32_t model)
{
	uint64_t n;

	if (model >= l->count)
		return 0;
	apb_mutex_lock(&l->mu);
	n = l->opens[model];
	apb_mutex_unlock(&l->mu);
	return n;
}

/* ---- load orders ------------------------------------------------------ */

void apb_learn_set_chunk_size(struct apb_learn *l, uint32_t chunk_size)
{
	l->chunk_size = chunk_size;
}

static uint64_t model_chunks(const struct apb_learn *l, uint32_t model)
{
	uint64_t size = apb_bundle_model(l->bundle, model)->size;

	return (size + l->chunk_size - 1) / l->chunk_size;
}

/* A reference to model's order, or NULL. */
static struct learned_order *order_get(struct apb_learn *l, uint32_t model)
{
	struct learned_order *o;

	apb_mutex_lock(&l->mu);
	o = l->orders[model];
	if (o)
		atomic_fetch_add(&o->refs, 1);
	apb_mutex_unlock(&l->mu);
	return o;
}

int apb_learn_order(struct apb_learn *l, uint32_t model,
		    struct apb_order_run **runs, size_t *n)
{
	struct learned_order *o;

	*runs = NULL;
	*n = 0;
	if (model >= l->count || !(o = order_get(l, model)))
		return 0;
	*runs = malloc(o->nruns * sizeof(**runs));
	if (!*runs) {
		order_put(o);
		return -ENOMEM;
	}
	memcpy(*runs, o->runs, o->nruns * sizeof(**runs));
	*n = o->nruns;
	order_put(o);
	return 0;
}

int apb_learn_offer_order(struct apb_learn *l, uint32_t model,
			  const struct apb_order_run *runs, size_t n)
{
	struct learned_order *o, *old = NULL;
	uint64_t chunks = apb_order_chunks(runs, n);
	bool replace;
	int rc;

	if (model >= l->count || l->chunk_size == 0)
		return -EINVAL;
	if (n == 0)
		return 0;
	rc = apb_order_check(runs, n, model_chunks(l, model));
	if (rc)
		return rc;
	o = order_new(runs, n);
	if (!o)
		return -ENOMEM;
	apb_mutex_lock(&l->mu);
	old = l->orders[model];
	replace = !old || chunks >= APB_ORDER_CHUNKS ||
		  2 * chunks >= apb_order_chunks(old->runs, old->nruns);
	if (replace)
		l->orders[model] = o;
	apb_mutex_unlock(&l->mu);
	order_put(replace ? old : o);
	return replace ? 1 : 0;
}

/* ---- loading ---------------------------------------------------------- */

/* Read all of path into a NUL-terminated *buf (caller frees). */
static int read_state(const char *path, char **buf, size_t *len, char *err,
		      size_t err_len)
{
	struct stat st;
	char *b = NULL;
	size_t n = 0, cap;
	/* O_NONBLOCK: opening a FIFO must not wait for a writer (the daemon
	 * reads this before it serves); the type check refuses it, and reads
	 * of a regular file ignore the flag. */
	int rc = 0, fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return apb_fail(-errno, err, err_len, "%s: %s", path,
				strerror(errno));
	if (fstat(fd, &st) != 0) {
		rc = apb_fail(-errno, err, err_len, "%s: %s", path,
			      strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = apb_fail(S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL, err,
			      err_len, "%s: is %s, not a regular file", path,
			      apb_file_kind(st.st_mode));
		goto out;
	}
	if (st.st_size > STATE_MAX_BYTES)
		goto too_big;
	/* Read to EOF, not to st_size: the file may grow meanwhile; growing
	 * past the limit is refused. */
	cap = (size_t)st.st_size + 4096;
	for (;;) {
		ssize_t r;
		if (n + 1 >= cap) {
			char *bigger;
			if (n > (size_t)STATE_MAX_BYTES)
				goto too_big;
			cap *= 2;
			bigger = realloc(b, cap);
			if (!bigger) {
				rc = apb_fail(-ENOMEM, err, err_len, "%s: %s",
					      path, strerror(ENOMEM));
				goto out;
			}
			b = bigger;
		} else if (!b && !(b = malloc(cap))) {
			rc = apb_fail(-ENOMEM, err, err_len, "%s: %s", path,
				      strerror(ENOMEM));
			goto out;
		}
		r = read(fd, b + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = apb_fail(-errno, err, err_len, "%s: %s", path,
				      strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > (size_t)STATE_MAX_BYTES)
		goto too_big;
	b[n] = '\0';
	*buf = b;
	*len = n;
	b = NULL;
	goto out;
too_big:
	rc = apb_fail(-EFBIG, err, err_len,
		      "%s: state file is larger than the limit of %lld bytes",
		      path, (long long)STATE_MAX_BYTES);
out:
	free(b);
	close(fd);
	return rc;
}

/* Is item a JSON number that is an integer in [0, 2^53 - 1]? */
static bool is_count(const cJSON *item)
{
	double v;

	if (!cJSON_IsNumber(item))
		return false;
	v = item->valuedouble;
	return v >= 0 && v <= APB_JSON_EXACT_INT_MAX && (double)(uint64_t)v == v;
}

/* The runs of a model's "order" (checked by check_order()) into a new
 * array; NULL if no memory. */
static struct apb_order_run *order_runs(const cJSON *runs, size_t *n)
{
	struct apb_order_run *v;
	const cJSON *r;
	size_t i = 0;

	*n = (size_t)cJSON_GetArraySize(runs);
	v = calloc(*n + 1, sizeof(*v));
	if (!v)
		return NULL;
	cJSON_ArrayForEach(r, runs) {
		v[i].first = (uint64_t)cJSON_GetArrayItem(r, 0)->valuedouble;
		v[i].count = (uint32_t)cJSON_GetArrayItem(r, 1)->valuedouble;
		i++;
	}
	return v;
}

/* Check a model's optional "order" (see "State file"). */
static int check_order(const cJSON *o, const char *name, char *err,
		       size_t err_len)
{
	const cJSON *cs, *size, *runs, *r;
	struct apb_order_run *v;
	size_t i = 0, n;
	int rc;

	if (!o)
		return 0;
	if (!cJSON_IsObject(o))
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.order' is not an object", name);
	cs = cJSON_GetObjectItemCaseSensitive(o, "chunk_size");
	size = cJSON_GetObjectItemCaseSensitive(o, "size");
	runs = cJSON_GetObjectItemCaseSensitive(o, "runs");
	if (!is_count(cs) || cs->valuedouble < 1 ||
	    cs->valuedouble > UINT32_MAX)
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.order.chunk_size' is missing or "
				"not an integer from 1 to 2^32 - 1", name);
	if (!is_count(size))
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.order.size' is missing or not a "
				"non-negative integer", name);
	if (!cJSON_IsArray(runs))
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.order.runs' is missing or not an "
				"array", name);
	if (cJSON_GetArraySize(runs) > (int)APB_ORDER_CHUNKS)
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.order.runs' has more than %u runs",
				name, APB_ORDER_CHUNKS);
	cJSON_ArrayForEach(r, runs) {
		const cJSON *f = cJSON_GetArrayItem(r, 0);
		const cJSON *c = cJSON_GetArrayItem(r, 1);

		if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) != 2 ||
		    !is_count(f) || !is_count(c) || c->valuedouble < 1 ||
		    c->valuedouble > APB_ORDER_CHUNKS)
			return apb_fail(-EINVAL, err, err_len,
					"'models.%s.order.runs[%zu]' is not "
					"[FIRST, COUNT] with COUNT from 1 to "
					"%u", name, i, APB_ORDER_CHUNKS);
		i++;
	}
	v = order_runs(runs, &n);
	if (!v)
		return apb_fail(-ENOMEM, err, err_len, "%s", strerror(ENOMEM));
	rc = apb_order_check(v, n,
			     ((uint64_t)size->valuedouble +
			      (uint64_t)cs->valuedouble - 1) /
				     (uint64_t)cs->valuedouble);
	free(v);
	if (rc == -ENOMEM)
		return apb_fail(rc, err, err_len, "%s", strerror(ENOMEM));
	if (rc)
		return apb_fail(rc, err, err_len,
				"'models.%s.order.runs' names a chunk past "
				"the model's size, a chunk twice, or more "
				"than %u chunks", name, APB_ORDER_CHUNKS);
	return 0;
}

/* Check one entry of "models" without touching any count. */
static int check_model(const cJSON *m, char *err, size_t err_len)
{
	const cJSON *opens, *next, *s;

	if (!cJSON_IsObject(m))
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s' is not an object",
				m->string);
	opens = cJSON_GetObjectItemCaseSensitive(m, "opens");
	if (!opens)
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.opens' is missing",
				m->string);
	if (!is_count(opens))
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.opens' is not a "
				"non-negative integer", m->string);
	next = cJSON_GetObjectItemCaseSensitive(m, "next");
	if (!next)
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.next' is missing",
				m->string);
	if (!cJSON_IsObject(next))
		return apb_fail(-EINVAL, err, err_len,
				"'models.%s.next' is not an object",
				m->string);
	cJSON_ArrayForEach(s, next) {
		if (!is_count(s))
			return apb_fail(-EINVAL, err, err_len,
					"'models.%s.next.%s' is "
					"not a non-negative integer",
					m->string, s->string);
	}
	return check_order(cJSON_GetObjectItemCaseSensitive(m, "order"),
			   m->string, err, err_len);
}

/* Check the whole document; returns its "models" object through *models. */
static int check_state(const cJSON *doc, const cJSON **models, char *err,
		       size_t err_len)
{
	const cJSON *v, *m;
	int rc;

	if (!cJSON_IsObject(doc))
		return apb_fail(-EINVAL, err, err_len,
				"top level is not an object");
	v = cJSON_GetObjectItemCaseSensitive(doc, "version");
	if (!v)
		return apb_fail(-EINVAL, err, err_len,
				"'version' is missing");
	if (!cJSON_IsNumber(v) || v->valuedouble != STATE_VERSION)
		return apb_fail(-EINVAL, err, err_len,
				"'version' is not %d",
				STATE_VERSION);
	*models = cJSON_GetObjectItemCaseSensitive(doc, "models");
	if (!*models)
		return apb_fail(-EINVAL, err, err_len,
				"'models' is missing");
	if (!cJSON_IsObject(*models))
		return apb_fail(-EINVAL, err, err_len,
				"'models' is not an object");
	cJSON_ArrayForEach(m, *models) {
		rc = check_model(m, err, err_len);
		if (rc)
			return rc;
	}
	return 0;
}

static uint32_t clamp32(double v)
{
	return v >= (double)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The order of a checked model entry m of bundle model `model`, if this
 * mount can use it (see "State file"); *out NULL if not. 0 or -ENOMEM. */
static int usable_order(const struct apb_learn *l, const cJSON *m,
			size_t model, struct learned_order **out)
{
	const cJSON *o = cJSON_GetObjectItemCaseSensitive(m, "order");
	struct apb_order_run *v;
	size_t n;

	*out = NULL;
	if (!o || l->chunk_size == 0 ||
	    cJSON_GetObjectItemCaseSensitive(o, "chunk_size")->valuedouble !=
		    (double)l->chunk_size ||
	    cJSON_GetObjectItemCaseSensitive(o, "size")->valuedouble !=
		    (double)apb_bundle_model(l->bundle, model)->size)
		return 0;
	v = order_runs(cJSON_GetObjectItemCaseSensitive(o, "runs"), &n);
	if (!v)
		return -ENOMEM;
	if (n)
		*out = order_new(v, n);
	free(v);
	return n && !*out ? -ENOMEM : 0;
}

/* The orders of a checked document, by bundle model (NULL: none), built
 * before the lock is taken. 0 or -ENOMEM (nothing built). */
static int build_orders(const struct apb_learn *l, const cJSON *models,
			struct learned_order ***out)
{
	struct learned_order **v = calloc((size_t)l->count + 1, sizeof(*v));
	const cJSON *m;
	size_t idx;

	*out = NULL;
	if (!v)
		return -ENOMEM;
	cJSON_ArrayForEach(m, models) {
		struct learned_order *o;

		if (apb_bundle_find(l->bundle, m->string, &idx) != 0)
			continue;
		if (usable_order(l, m, idx, &o)) {
			for (uint32_t i = 0; i < l->count; i++)
				order_put(v[i]);
			free(v);
			return -ENOMEM;
		}
		if (o) { /* a name given twice: the last one's */
			order_put(v[idx]);
			v[idx] = o;
		}
	}
	*out = v;
	return 0;
}

/* Add a checked document's counts to the tables and swap in its orders
 * (mu held): orders[m] and the replaced ones trade places, for the caller
 * to put with no lock held. Cannot fail. */
static void merge_state(struct apb_learn *l, const cJSON *models,
			struct learned_order **orders)
{
	const cJSON *m, *s;
	size_t from, to;

	apb_assert_held(&l->mu);
	for (uint32_t i = 0; i < l->count; i++) {
		if (orders[i]) {
			struct learned_order *old = l->orders[i];
			l->orders[i] = orders[i];
			orders[i] = old;
		}
	}
	cJSON_ArrayForEach(m, models) {
		if (apb_bundle_find(l->bundle, m->string, &from) != 0)
			continue;
		l->opens[from] = add64(
			l->opens[from],
			(uint64_t)cJSON_GetObjectItemCaseSensitive(m, "opens")
				->valuedouble);
		cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(m, "next")) {
			if (apb_bundle_find(l->bundle, s->string, &to) != 0)
				continue;
			bump(l, (uint32_t)from, (uint32_t)to,
			     clamp32(s->valuedouble));
		}
	}
}

int apb_learn_load(struct apb_learn *l, const char *path, char *err,
		   size_t err_len)
{
	char *buf = NULL, why[256];
	const char *end = NULL;
	const cJSON *models = NULL;
	struct learned_order **orders = NULL;
	cJSON *doc = NULL;
	size_t len = 0;
	int rc;

	rc = read_state(path, &buf, &len, err, err_len);
	if (rc || len == 0) /* empty: no counts yet, as for a new file */
		goto out;
	if (memchr(buf, '\0', len)) {
		rc = apb_fail(-EINVAL, why, sizeof(why),
			      "not JSON (NUL byte at offset %zu)",
			      (size_t)((char *)memchr(buf, '\0', len) - buf));
		goto not_state;
	}
	/* len + 1 includes the NUL, so trailing garbage is an error. */
	doc = cJSON_ParseWithLengthOpts(buf, len + 1, &end, true);
	if (!doc) {
		rc = apb_fail(-EINVAL, why, sizeof(why),
			      "not JSON (error at offset %zu of "
			      "%zu)", end ? (size_t)(end - buf) : (size_t)0,
			      len);
		goto not_state;
	}
	rc = check_state(doc, &models, why, sizeof(why));
	if (rc == -ENOMEM) {
		apb_fail(rc, err, err_len, "%s: %s", path, why);
		goto out;
	}
	if (rc)
		goto not_state;
	rc = build_orders(l, models, &orders);
	if (rc) {
		apb_fail(rc, err, err_len, "%s: %s", path, strerror(-rc));
		goto out;
	}
	apb_mutex_lock(&l->mu);
	merge_state(l, models, orders);
	apb_mutex_unlock(&l->mu);
	for (uint32_t i = 0; i < l->count; i++)
		order_put(orders[i]); /* the replaced ones */
	free(orders);
	goto out;
not_state:
	apb_fail(rc, err, err_len, "%s: not an apbundlefs state file: %s",
		 path, why);
out:
	cJSON_Delete(doc);
	free(buf);
	return rc;
}

/* ---- saving ----------------------------------------------------------- */

/* The tables as saving found them (apb_learn_save()). */
struct snapshot {
	uint64_t *opens;
	struct succ *next;
	struct learned_order **orders; /* references */
};

/* m's "order" object added to o; false if no memory. */
static bool add_order(const struct apb_learn *l, cJSON *o,
		      const struct learned_order *ord, uint32_t m)
{
	cJSON *j = cJSON_AddObjectToObject(o, "order"), *runs;

	if (!j || !cJSON_AddNumberToObject(j, "chunk_size", l->chunk_size) ||
	    !cJSON_AddNumberToObject(
		    j, "size", (double)apb_bundle_model(l->bundle, m)->size) ||
	    !(runs = cJSON_AddArrayToObject(j, "runs")))
		return false;
	for (uint32_t i = 0; i < ord->nruns; i++) {
		cJSON *r = cJSON_CreateArray();
		if (!r)
			return false;
		cJSON_AddItemToArray(runs, r);
		if (!cJSON_AddItemToArray(r, cJSON_CreateNumber(
						     (double)ord->runs[i].first)) ||
		    !cJSON_AddItemToArray(r, cJSON_CreateNumber(
						     (double)ord->runs[i].count)))
			return false;
	}
	return true;
}

/* The "models" entry of model m from a snapshot, or NULL (no memory). */
static cJSON *model_json(const struct apb_learn *l, const struct snapshot *sn,
			 uint32_t m)
{
	const uint64_t *opens = sn->opens;
	const struct succ *next = sn->next;
	struct succ t[APB_LEARN_SUCCESSORS];
	cJSON *o = cJSON_CreateObject(), *nx;
	size_t n;
	/* Loading refuses numbers above 2^53 - 1 (not exact in a double), so
	 * a larger count (10^15 opens: never, in practice) is written as that. */
	double o_n = opens[m] > (uint64_t)APB_JSON_EXACT_INT_MAX
			     ? APB_JSON_EXACT_INT_MAX
			     : (double)opens[m];

	if (!o || !cJSON_AddNumberToObject(o, "opens", o_n))
		goto fail;
	nx = cJSON_AddObjectToObject(o, "next");
	if (!nx)
		goto fail;
	n = sorted_successors(&next[(size_t)m * APB_LEARN_SUCCESSORS], t);
	for (size_t i = 0; i < n; i++) {
		const char *name = apb_bundle_model(l->bundle, t[i].model)->name;
		if (!cJSON_AddNumberToObject(nx, name, (double)t[i].count))
			goto fail;
	}
	if (sn->orders[m] && !add_order(l, o, sn->orders[m], m))
		goto fail;
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

static bool has_successor(const struct succ *next, uint32_t m)
{
	for (int i = 0; i < APB_LEARN_SUCCESSORS; i++)
		if (next[(size_t)m * APB_LEARN_SUCCESSORS + i].count)
			return true;
	return false;
}

/* The whole document from a snapshot, unformatted; NULL if no memory. */
static char *state_json(const struct apb_learn *l, const struct snapshot *sn)
{
	cJSON *doc = cJSON_CreateObject(), *models;
	char *text = NULL;

	if (!doc || !cJSON_AddNumberToObject(doc, "version", STATE_VERSION))
		goto out;
	models = cJSON_AddObjectToObject(doc, "models");
	if (!models)
		goto out;
	for (uint32_t m = 0; m < l->count; m++) {
		cJSON *o;

		if (sn->opens[m] == 0 && !has_successor(sn->next, m) &&
		    !sn->orders[m])
			continue;
		o = model_json(l, sn, m);
		if (!o)
			goto out;
		cJSON_AddItemToObject(models,
				      apb_bundle_model(l->bundle, m)->name, o);
	}
	text = cJSON_PrintUnformatted(doc);
out:
	cJSON_Delete(doc);
	return text;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int apb_learn_save(struct apb_learn *l, const char *path, char *err,
		   size_t err_len)
{
	struct apb_atomic_file af = {.fd = -1};
	size_t nsucc = (size_t)l->count * APB_LEARN_SUCCESSORS;
	struct snapshot sn = {
		.opens = malloc(((size_t)l->count + 1) * sizeof(*sn.opens)),
		.next = malloc((nsucc + 1) * sizeof(*sn.next)),
		.orders = calloc((size_t)l->count + 1, sizeof(*sn.orders)),
	};
	char *text = NULL;
	int rc;

	if (!sn.opens || !sn.next || !sn.orders) {
		rc = apb_fail(-ENOMEM, err, err_len, "%s: %s", path,
			      strerror(ENOMEM));
		goto out;
	}
	/* Snapshot, so the lock is not held while building or writing. */
	apb_mutex_lock(&l->mu);
	memcpy(sn.opens, l->opens, (size_t)l->count * sizeof(*sn.opens));
	memcpy(sn.next, l->next, nsucc * sizeof(*sn.next));
	for (uint32_t m = 0; m < l->count; m++) {
		sn.orders[m] = l->orders[m];
		if (sn.orders[m])
			atomic_fetch_add(&sn.orders[m]->refs, 1);
	}
	apb_mutex_unlock(&l->mu);
	text = state_json(l, &sn);
	if (!text) {
		rc = apb_fail(-ENOMEM, err, err_len, "%s: %s", path,
			      strerror(ENOMEM));
		goto out;
	}
	rc = apb_atomic_open(&af, path, err, err_len);
	if (rc)
		goto out;
	rc = write_all(af.fd, text, strlen(text));
	if (rc) {
		apb_fail(rc, err, err_len, "%s: %s", path, strerror(-rc));
		goto out;
	}
	rc = apb_atomic_commit(&af, err, err_len);
out:
	apb_atomic_abort(&af);
	cJSON_free(text);
	if (sn.orders)
		for (uint32_t m = 0; m < l->count; m++)
			order_put(sn.orders[m]);
	free(sn.orders);
	free(sn.opens);
	free(sn.next);
	return rc;
}
