/*
 * replay.c - replay_policy(): a trace through the library's cache. The
 * cache is the daemon's, configured as the daemon configures it (budget,
 * chunk size, policy, default prefetch share); only the loader differs.
 * Replay is single-threaded and in record order, so a get never waits
 * and each demand record is exactly one hit or one miss.
 *
 * What differs from the daemon, on purpose: a read of several chunks
 * holds them all until it replies, and a miss loads the chunks after it
 * in the same read with it (apb_cache_get_ahead()); the replay gets and
 * puts one chunk at a time, which counts the same hits and misses and
 * changes the eviction order only among the chunks of one read.
 */
#include "replay.h"

#include <errno.h>
#include <string.h>

/* The loader: lengths only. The slots are never written, so the cache's
 * MAP_NORESERVE region costs no memory however large the budget. */
static long count_load(void *ctx, uint32_t model, uint64_t first,
		       void *const *bufs, size_t n, size_t cap, size_t *lens)
{
	const struct trace *t = ctx;

	(void)bufs;
	(void)cap;
	for (size_t i = 0; i < n; i++)
		lens[i] = (size_t)trace_chunk_len(t, model, first + i);
	return 0;
}

/* One prefetch record, as prefetch.c's run_job() runs a job. */
static int prefetch_job(struct apb_cache *c, const struct trace *t,
			const struct apb_trace_record *r)
{
	uint64_t end = trace_model_chunks(t, r->model);
	uint32_t count = r->count, done = 0;

	if (r->chunk + count > end) /* the daemon clips to the model */
		count = (uint32_t)(end - r->chunk);
	while (done < count) {
		uint32_t loaded;
		int rc = apb_cache_prefetch_run(c, r->model, r->chunk + done,
						count - done, &loaded);

		if (rc == -EAGAIN)
			return 0; /* no room to spare: the job is abandoned */
		if (rc)
			return rc;
		done += loaded > 0 ? loaded : 1;
	}
	return 0;
}

int replay_policy(const struct trace *t, enum apb_eviction policy,
		  uint64_t budget_bytes, bool prefetch,
		  struct replay_result *out)
{
	struct apb_cache_config cfg = {
		.budget_bytes = budget_bytes,
		.chunk_size = t->chunk_size,
		.policy = policy,
		.model_count = t->model_count,
		.load = count_load,
		.load_ctx = (void *)t,
	};
	struct apb_cache_stats st;
	struct apb_cache *c;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = apb_cache_new(&cfg, &c);
	if (rc)
		return rc;
	for (uint64_t i = 0; i < t->records && rc == 0; i++) {
		struct apb_trace_record r;
		struct apb_chunk *ch;

		trace_record(t, i, &r);
		if (r.kind == APB_TRACE_KIND_PREFETCH) {
			if (prefetch)
				rc = prefetch_job(c, t, &r);
			continue;
		}
		rc = apb_cache_get(c, r.model, r.chunk, &ch);
		if (rc == 0) {
			out->served_bytes += apb_chunk_len(ch);
			apb_cache_put(c, ch);
		}
	}
	apb_cache_stats(c, &st);
	apb_cache_free(c);
	out->demand = st.hits + st.misses;
	out->hits = st.hits;
	out->reuse_hits = st.reuse_hits;
	out->misses = st.misses;
	out->loaded_bytes = st.loaded_bytes;
	out->prefetch_issued = st.prefetch_issued;
	out->prefetch_wasted = st.prefetch_wasted;
	return rc;
}
