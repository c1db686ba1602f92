/*
 * prefetch.c - the prefetcher: a few low-priority worker threads that load
 * chunk ranges ahead of demand (struct apb_prefetcher, prefetch.h), and the
 * backoff that shrinks readahead windows while prefetches are wasted.
 * Deciding what to prefetch is readahead.c's job.
 *
 * QUEUE AND WORKERS
 *
 * Ranges {model, first, count} wait in a ring of QUEUE_JOBS entries. Submit
 * never blocks and never allocates: a full ring refuses the range with
 * -EAGAIN (prefetch is advice, and a reader that outruns the workers by
 * QUEUE_JOBS ranges gains nothing from one more). A range of any size
 * takes one entry: a readahead window, a model's first bytes, a whole
 * model.
 *
 * Workers split ranges into jobs as they take them: a worker takes the
 * first job_chunks chunks of the oldest range (about JOB_BYTES, at most
 * APB_CACHE_RUN_MAX: one read of the bundle each, large enough for a disk
 * that O_DIRECT leaves without kernel readahead, small enough that the
 * workers load a 4 MiB window in parallel; on a cache whose run limit was
 * raised above APB_CACHE_RUN_MAX, a whole run: that cache reads from a
 * source where each load costs a round trip, fs/main.c) and puts the rest of the range
 * at the back of the ring, waking another worker for it. So one range -
 * a whole model's prefetch included - keeps every worker busy (one worker
 * reading a window alone fell behind the demand reads it should be ahead
 * of; docs/DESIGN.md), and ranges queued together are served in turns, a
 * job each: a whole-model prefetch does not stall the readahead windows
 * queued behind it.
 *
 * A worker calls apb_cache_prefetch_run() on what is left of its job, with
 * no lock of ours held: each call loads the absent chunks at the front of
 * the job with one read (a store with high latency per read then moves a
 * job per round trip, not a chunk) and the worker moves past them, or past
 * the one chunk that call found present. It abandons the rest of the job,
 * and the rest of its range still queued,
 *   - on -EAGAIN: the cache has no slot to spare, or unread prefetched
 *     chunks already fill their share; loading on would only evict what
 *     was just prefetched. The reader, when it gets there, triggers the
 *     next range itself;
 *   - on any other error (a bad model, the loader's I/O or checksum
 *     error): the demand read of that chunk will report it to the reader,
 *     which is the only one who can act on it;
 *   - when the prefetcher is being freed (checked before every call, so
 *     apb_prefetcher_free() waits for at most one run per worker).
 *
 * Workers take the lowest level of the best-effort I/O class: a demand
 * read, whose caller is waiting, should win a contest for the disk against
 * a load that nobody waits for yet (the cache also refuses a prefetch while
 * a get waits for a slot). Not the idle class: under a scheduler that
 * honours it, a steady demand stream - the very sequential reader being
 * prefetched for - would starve the prefetch entirely. And not a lower CPU
 * priority: a demand read that finds its chunk being loaded by a worker
 * waits for that worker, so a worker descheduled for nice costs the reader
 * directly (measured with nice 10: a cold sequential read 0.71x as fast as
 * without prefetch; at the same priority, 1.20x; docs/DESIGN.md). The call
 * may fail (a seccomp filter, a kernel without ioprio, an I/O scheduler
 * that ignores classes); the prefetcher then merely competes as an equal,
 * so failures are ignored. Workers also block every signal, so that the
 * signals meant for the daemon (SIGINT/SIGTERM unmount) go to threads that
 * act on them.
 *
 * BACKOFF
 *
 * A prefetched chunk that is evicted before any get read it was a waste of
 * I/O and of a slot that could have held data someone reads. The cache
 * counts both (prefetch_issued, prefetch_wasted). After a job, a worker
 * takes a sample of those counters when SAMPLE_JOBS jobs or SAMPLE_MS have
 * passed since the last one, whichever comes first, and compares the
 * increments since then:
 *
 *   wasted > issued / 4   shift + 1 (halve the window), at most MAX_SHIFT
 *   wasted < issued / 16  shift - 1 (double it back), at least 0
 *   otherwise             keep it
 *
 * and apb_prefetcher_window(max) is max >> shift (at least 1 byte;
 * readahead rounds up to one chunk). A quarter wasted means the windows
 * are clearly larger than the cache can hold until the reader gets there
 * (the budget is small for the number of streams, or readers stop early);
 * halving at once frees room quickly. Recovery waits for waste under 1/16,
 * a clear gap below the shrink threshold, so the window does not flap
 * between two sizes on a workload that wastes about 1/4. MAX_SHIFT 6
 * divides by 64: with the default 8 MiB readahead and 64 KiB chunks that is
 * 2 chunks, still enough to overlap one load with one read. A sample whose
 * increments total fewer than SAMPLE_MIN_CHUNKS is too small to judge (two
 * evictions out of three would halve the window); it is not taken, and the
 * increments accumulate into the next. A counter that went backwards
 * (a stats reset) restarts the baseline without a decision.
 *
 * The counters are the cache's, so waste caused by any reader, whoever
 * submitted the chunk, shrinks every window: the budget is shared, and so
 * is the pressure.
 *
 * Sampling happens before a worker marks its job finished, so when
 * apb_prefetcher_drain() returns the backoff has seen every finished job.
 *
 * CANCEL
 *
 * A range submitted with a tag (fs/order.c: a learned order's session)
 * can be withdrawn: apb_prefetcher_cancel() removes every queued entry
 * with that tag, the rest of a range a worker split included, keeping the
 * others' order. A job already taken finishes (at most one per worker).
 *
 * LOCKING
 *
 *   mu         the ring (head, len, jobs, their tags), busy, stop; work_cv and idle_cv
 *              wait on it. Never held while calling into the cache.
 *   sample_mu  the sampling state (last_*, jobs_since_sample, last_sample).
 *              Held across apb_cache_stats(), which takes the cache's lock:
 *              order sample_mu -> cache mu; the cache never calls us.
 *   (atomic)   shift: written under sample_mu, read by window() lock-free.
 *              stop is also mirrored in an atomic so a worker can check it
 *              between chunks without taking mu.
 * mu and sample_mu are never held together.
 */
#include "apbundle/prefetch.h"
#include "lock.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_JOBS 256u
#define JOB_BYTES (1u << 20)
#define SAMPLE_JOBS 8u
#define SAMPLE_MS 100u
#define SAMPLE_MIN_CHUNKS 8u
#define MAX_SHIFT 6u

/* linux/ioprio.h, which not every libc's headers carry. */
#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_CLASS_BE 2
#define IOPRIO_BE_LOWEST 7
#define IOPRIO_CLASS_SHIFT 13

/* A queued range, or the job a worker took from one (same id). */
struct job {
	uint32_t model;
	uint32_t count;
	uint64_t first;
	uint64_t id;             /* which submitted range */
	uint64_t tag;            /* the submitter's, for cancel; 0: none */
};

struct apb_prefetcher {
	/* Immutable after apb_prefetcher_new(). */
	struct apb_cache *cache;
	pthread_t *threads;
	unsigned nthreads;
	uint32_t job_chunks;     /* chunks a worker takes from a range */

	struct apb_mutex mu;
	pthread_cond_t work_cv;  /* a job was queued, or stop */
	pthread_cond_t idle_cv;  /* the ring emptied and no worker is busy */
	/* Everything below up to sample_mu: mu. */
	struct job ring[QUEUE_JOBS];
	uint32_t head;           /* oldest job */
	uint32_t len;            /* jobs queued */
	unsigned busy;           /* workers between taking and finishing */
	uint64_t next_id;        /* of the next submitted range */
	bool stop;
	atomic_bool stopping;    /* mirror of stop for the chunk loop */

	struct apb_mutex sample_mu;
	/* Everything below up to shift: sample_mu. */
	uint64_t last_issued;    /* prefetch_issued at the last sample */
	uint64_t last_wasted;    /* prefetch_wasted at the last sample */
	unsigned jobs_since_sample;
	struct timespec last_sample;

	atomic_uint shift;       /* window divisor, log2, 0 .. MAX_SHIFT */
};

/* ---- workers --------------------------------------------------------- */

static void lower_own_io_priority(void)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);

	/* Failures are harmless: see "QUEUE AND WORKERS" above. */
	(void)syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid,
		      IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT | IOPRIO_BE_LOWEST);
}

static uint64_t ms_between(const struct timespec *a, const struct timespec *b)
{
	int64_t ms = (int64_t)(b->tv_sec - a->tv_sec) * 1000 +
		     (b->tv_nsec - a->tv_nsec) / 1000000;

	return ms < 0 ? 0 : (uint64_t)ms;
}

/* Apply one sample's increments to the shift (sample_mu held). */
static void judge_waste(struct apb_prefetcher *p, uint64_t issued,
			uint64_t wasted)
{
	unsigned shift = atomic_load(&p->shift);

	apb_assert_held(&p->sample_mu);
	if (wasted * 4 > issued && shift < MAX_SHIFT)
		atomic_store(&p->shift, shift + 1);
	else if (wasted * 16 < issued && shift > 0)
		atomic_store(&p->shift, shift - 1);
}

/* After a job: take a sample if one is due (see "BACKOFF"). */
static void maybe_sample(struct apb_prefetcher *p)
{
	struct apb_cache_stats st;
	struct timespec now;
	uint64_t issued, wasted;

	clock_gettime(CLOCK_MONOTONIC, &now);
	apb_mutex_lock(&p->sample_mu);
	if (++p->jobs_since_sample < SAMPLE_JOBS &&
	    ms_between(&p->last_sample, &now) < SAMPLE_MS)
		goto out;
	p->jobs_since_sample = 0;
	p->last_sample = now;
	apb_cache_stats(p->cache, &st);
	if (st.prefetch_issued < p->last_issued ||
	    st.prefetch_wasted < p->last_wasted)
		goto rebase;
	issued = st.prefetch_issued - p->last_issued;
	wasted = st.prefetch_wasted - p->last_wasted;
	if (issued + wasted < SAMPLE_MIN_CHUNKS)
		goto out;
	judge_waste(p, issued, wasted);
rebase:
	p->last_issued = st.prefetch_issued;
	p->last_wasted = st.prefetch_wasted;
out:
	apb_mutex_unlock(&p->sample_mu);
}

/* Wait for a range; take its first job_chunks chunks as *job and queue
 * the rest at the back (see "QUEUE AND WORKERS"). False when the
 * prefetcher stops. */
static bool take_job(struct apb_prefetcher *p, struct job *job)
{
	bool ok = false;

	apb_mutex_lock(&p->mu);
	while (!p->stop && p->len == 0)
		apb_cond_wait(&p->work_cv, &p->mu);
	if (!p->stop) {
		struct job rest = p->ring[p->head];

		*job = rest;
		if (job->count > p->job_chunks)
			job->count = p->job_chunks;
		rest.first += job->count;
		rest.count -= job->count;
		p->head = (p->head + 1) % QUEUE_JOBS;
		p->len--;
		if (rest.count > 0) { /* the entry just freed: no overflow */
			p->ring[(p->head + p->len) % QUEUE_JOBS] = rest;
			p->len++;
			pthread_cond_signal(&p->work_cv);
		}
		p->busy++;
		ok = true;
	}
	apb_mutex_unlock(&p->mu);
	return ok;
}

/* A job of range id was abandoned: drop what is still queued of it. */
static void drop_range(struct apb_prefetcher *p, uint64_t id)
{
	apb_mutex_lock(&p->mu);
	for (uint32_t i = 0; i < p->len; i++) {
		if (p->ring[(p->head + i) % QUEUE_JOBS].id != id)
			continue;
		for (; i + 1 < p->len; i++) /* close the gap, keeping order */
			p->ring[(p->head + i) % QUEUE_JOBS] =
				p->ring[(p->head + i + 1) % QUEUE_JOBS];
		p->len--;
		break;
	}
	apb_mutex_unlock(&p->mu);
}

static void finish_job(struct apb_prefetcher *p)
{
	apb_mutex_lock(&p->mu);
	p->busy--;
	if (p->busy == 0 && p->len == 0)
		pthread_cond_broadcast(&p->idle_cv);
	apb_mutex_unlock(&p->mu);
}

/* Load the job; false if it was abandoned (see the top). */
static bool run_job(struct apb_prefetcher *p, const struct job *job)
{
	uint32_t done = 0;

	while (done < job->count) {
		uint32_t loaded;

		if (atomic_load_explicit(&p->stopping, memory_order_relaxed))
			return false;
		/* -EAGAIN or an error: abandon the rest (see the top). */
		if (apb_cache_prefetch_run(p->cache, job->model,
					   job->first + done,
					   job->count - done, &loaded))
			return false;
		done += loaded > 0 ? loaded : 1; /* 0: that chunk is present */
	}
	return true;
}

static void *worker_main(void *arg)
{
	struct apb_prefetcher *p = arg;
	struct job job;

	lower_own_io_priority();
	while (take_job(p, &job)) {
		if (!run_job(p, &job))
			drop_range(p, job.id);
		maybe_sample(p);
		finish_job(p);
	}
	return NULL;
}

/* ---- lifetime -------------------------------------------------------- */

/* Tell the first n workers to stop and join them. */
static void stop_workers(struct apb_prefetcher *p, unsigned n)
{
	apb_mutex_lock(&p->mu);
	p->stop = true;
	atomic_store(&p->stopping, true);
	pthread_cond_broadcast(&p->work_cv);
	apb_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < n; i++)
		pthread_join(p->threads[i], NULL);
}

/* Start the workers with every signal blocked (they inherit the mask). */
static int start_workers(struct apb_prefetcher *p)
{
	sigset_t all, old;
	int rc = 0;
	unsigned i;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (i = 0; i < p->nthreads; i++) {
		rc = pthread_create(&p->threads[i], NULL, worker_main, p);
		if (rc != 0)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		stop_workers(p, i);
		return -rc;
	}
	return 0;
}

static void destroy(struct apb_prefetcher *p)
{
	pthread_cond_destroy(&p->idle_cv);
	pthread_cond_destroy(&p->work_cv);
	apb_mutex_destroy(&p->sample_mu);
	apb_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}

static int init_sync(struct apb_prefetcher *p)
{
	if (apb_mutex_init(&p->mu) != 0)
		return -ENOMEM;
	if (apb_mutex_init(&p->sample_mu) != 0)
		goto no_sample_mu;
	if (pthread_cond_init(&p->work_cv, NULL) != 0)
		goto no_work_cv;
	if (pthread_cond_init(&p->idle_cv, NULL) != 0)
		goto no_idle_cv;
	return 0;

no_idle_cv:
	pthread_cond_destroy(&p->work_cv);
no_work_cv:
	apb_mutex_destroy(&p->sample_mu);
no_sample_mu:
	apb_mutex_destroy(&p->mu);
	return -ENOMEM;
}

int apb_prefetcher_new(struct apb_cache *cache, unsigned threads,
		       uint32_t chunk_size, struct apb_prefetcher **out)
{
	struct apb_cache_stats st;
	struct apb_prefetcher *p;
	int rc;

	*out = NULL;
	if (!cache || threads == 0 || chunk_size == 0)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->threads = calloc(threads, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		return -ENOMEM;
	}
	rc = init_sync(p);
	if (rc) {
		free(p->threads);
		free(p);
		return rc;
	}
	p->cache = cache;
	p->nthreads = threads;
	p->job_chunks = apb_prefetch_job_chunks(chunk_size);
	/* A cache whose runs were made longer than the default reads from
	 * a source that pays a round trip per load (a URL): a job is then a
	 * whole run (see the top). */
	if (apb_cache_run_max(cache) > APB_CACHE_RUN_MAX)
		p->job_chunks = apb_cache_run_max(cache);
	atomic_init(&p->stopping, false);
	atomic_init(&p->shift, 0);
	apb_cache_stats(cache, &st);
	p->last_issued = st.prefetch_issued;
	p->last_wasted = st.prefetch_wasted;
	clock_gettime(CLOCK_MONOTONIC, &p->last_sample);

	rc = start_workers(p);
	if (rc) {
		destroy(p);
		return rc;
	}
	*out = p;
	return 0;
}

void apb_prefetcher_free(struct apb_prefetcher *p)
{
	if (!p)
		return;
	stop_workers(p, p->nthreads);
	destroy(p);
}

/* ---- requests -------------------------------------------------------- */

uint32_t apb_prefetch_job_chunks(uint32_t chunk_size)
{
	uint32_t n = chunk_size ? JOB_BYTES / chunk_size : 1;

	if (n == 0)
		return 1;
	return n > APB_CACHE_RUN_MAX ? APB_CACHE_RUN_MAX : n;
}

int apb_prefetcher_submit(struct apb_prefetcher *p, uint32_t model,
			  uint64_t first, uint32_t count)
{
	return apb_prefetcher_submit_tagged(p, model, first, count, 0);
}

int apb_prefetcher_submit_tagged(struct apb_prefetcher *p, uint32_t model,
				 uint64_t first, uint32_t count, uint64_t tag)
{
	int rc = 0;

	if (count == 0)
		return 0;
	apb_mutex_lock(&p->mu);
	if (p->len == QUEUE_JOBS) {
		rc = -EAGAIN;
		goto out;
	}
	p->ring[(p->head + p->len) % QUEUE_JOBS] =
		(struct job){.model = model, .count = count, .first = first,
			     .id = p->next_id++, .tag = tag};
	p->len++;
	pthread_cond_signal(&p->work_cv);
out:
	apb_mutex_unlock(&p->mu);
	return rc;
}

uint64_t apb_prefetcher_cancel(struct apb_prefetcher *p, uint64_t tag)
{
	uint64_t dropped = 0;
	uint32_t kept = 0;

	if (tag == 0)
		return 0;
	apb_mutex_lock(&p->mu);
	/* Compact the ring in place, keeping order. */
	for (uint32_t i = 0; i < p->len; i++) {
		struct job j = p->ring[(p->head + i) % QUEUE_JOBS];
		if (j.tag == tag)
			dropped += j.count;
		else
			p->ring[(p->head + kept++) % QUEUE_JOBS] = j;
	}
	p->len = kept;
	if (p->busy == 0 && p->len == 0)
		pthread_cond_broadcast(&p->idle_cv);
	apb_mutex_unlock(&p->mu);
	return dropped;
}

uint64_t apb_prefetcher_window(struct apb_prefetcher *p, uint64_t max_bytes)
{
	uint64_t w = max_bytes >> atomic_load(&p->shift);

	return w ? w : 1;
}

void apb_prefetcher_drain(struct apb_prefetcher *p)
{
	apb_mutex_lock(&p->mu);
	while (p->len != 0 || p->busy != 0)
		apb_cond_wait(&p->idle_cv, &p->mu);
	apb_mutex_unlock(&p->mu);
}
