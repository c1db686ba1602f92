/*
 * models.c - what the daemon does with whole models: pins and preloads at
 * mount, prefetch of the models that usually follow an opened one, the
 * access-count state file, and the .control commands that name a model.
 *
 * Mount-time work runs on one startup thread, started after the mount is
 * up (and after fuse_daemonize(), whose fork no thread survives), so that
 * neither pins nor preloads delay the mount: pins first (a pinned model is
 * loaded whole and never evicted), then preloads (prefetch= models, then
 * the auto_preload= most opened ones that fit). Pins are checked against
 * the budget before mounting, so a pin that cannot fit fails the mount with
 * its reason instead of failing later in the background.
 *
 * Model-level prefetch: on every open, learn.c records the transition from
 * the previously opened model; the prefetch_count models that most often
 * followed this one get their first `readahead` bytes (all of a smaller
 * model) queued for the prefetch workers, under the same budget rules as
 * any prefetch (cold chunks, a bounded share).
 */
#include "apbfs.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t chunks_of(const struct apbfs *fs, uint64_t bytes)
{
	return (bytes + fs->opt.chunk_size - 1) / fs->opt.chunk_size;
}

/* Queue chunks [0, bytes) of model for the prefetch workers. */
static int prefetch_head(struct apbfs *fs, uint32_t model, uint64_t bytes)
{
	uint64_t size = apb_bundle_model(fs->bundle, model)->size;
	uint64_t n = chunks_of(fs, bytes < size ? bytes : size);

	if (!fs->prefetcher || n == 0)
		return 0;
	return apb_prefetcher_submit(fs->prefetcher, model, 0,
				     n > UINT32_MAX ? UINT32_MAX : (uint32_t)n);
}

/* Parse "a:b:c" into model indices. Returns the count or -ENOENT, naming
 * the unknown model in err. */
static int parse_names(const struct apbfs *fs, const char *list,
		       uint32_t **out, char *err, size_t err_len)
{
	char *copy = strdup(list), *save = NULL;
	size_t cap = 1, n = 0, idx;
	uint32_t *v = NULL;
	int rc = -ENOMEM;

	for (const char *p = list; *p; p++)
		cap += *p == ':';
	v = calloc(cap, sizeof(*v));
	if (!copy || !v)
		goto out;
	for (char *name = strtok_r(copy, ":", &save); name;
	     name = strtok_r(NULL, ":", &save)) {
		if (apb_bundle_find(fs->bundle, name, &idx) != 0) {
			snprintf(err, err_len, "no model '%s' in the bundle",
				 name);
			rc = -ENOENT;
			goto out;
		}
		v[n++] = (uint32_t)idx;
	}
	*out = v;
	v = NULL;
	rc = (int)n;
out:
	free(copy);
	free(v);
	return rc;
}

int apbfs_models_check(struct apbfs *fs, char *err, size_t err_len)
{
	struct apbfs_options *o = &fs->opt;
	struct apb_cache_stats cs;
	uint64_t need = 0;
	int n;

	if (o->pin_list) {
		n = parse_names(fs, o->pin_list, &fs->pins, err, err_len);
		if (n < 0)
			return n;
		fs->npins = (size_t)n;
	}
	if (o->preload_list) {
		n = parse_names(fs, o->preload_list, &fs->preloads, err,
				err_len);
		if (n < 0)
			return n;
		fs->npreloads = (size_t)n;
	}
	for (size_t i = 0; i < fs->npins; i++)
		need += chunks_of(fs, apb_bundle_model(fs->bundle,
						       fs->pins[i])->size);
	apb_cache_stats(fs->cache, &cs);
	if (need * o->chunk_size > cs.pinnable_bytes) {
		snprintf(err, err_len, "pin: the pinned models need %llu "
			 "chunks, but max_memory leaves room to pin %llu (the "
			 "rest is kept for other reads)",
			 (unsigned long long)need,
			 (unsigned long long)(cs.pinnable_bytes /
					      o->chunk_size));
		return -ENOSPC;
	}
	return 0;
}

static void preload_popular(struct apbfs *fs)
{
	uint32_t *top = calloc(fs->opt.auto_preload, sizeof(*top));
	struct apb_cache_stats cs;
	uint64_t budget, used = 0;
	size_t n;

	if (!top)
		return;
	apb_cache_stats(fs->cache, &cs);
	budget = cs.prefetch_share_bytes; /* what preloads may hold at once */
	n = apb_learn_popular(fs->learn, top, fs->opt.auto_preload);
	for (size_t i = 0; i < n; i++) {
		uint64_t size = apb_bundle_model(fs->bundle, top[i])->size;
		uint64_t bytes = chunks_of(fs, size) * fs->opt.chunk_size;

		if (used + bytes > budget)
			continue; /* does not fit; a smaller one may */
		used += bytes;
		(void)prefetch_head(fs, top[i], size);
	}
	free(top);
}

static void *startup_main(void *arg)
{
	struct apbfs *fs = arg;

	for (size_t i = 0; i < fs->npins; i++) {
		uint32_t m = fs->pins[i];
		int rc = apb_cache_pin_model(fs->cache, m,
					     apb_bundle_model(fs->bundle, m)->size);
		if (rc)
			fuse_log(FUSE_LOG_ERR, "apbundlefs: pin %s: %s\n",
				 apb_bundle_model(fs->bundle, m)->name,
				 strerror(-rc));
	}
	for (size_t i = 0; i < fs->npreloads; i++)
		(void)prefetch_head(fs, fs->preloads[i], UINT64_MAX);
	if (fs->learn && fs->opt.auto_preload)
		preload_popular(fs);
	return NULL;
}

/* fs->learn, with the state file's counts, comes from main.c's setup:
 * the file is judged before mounting. */
int apbfs_models_start(struct apbfs *fs)
{
	int rc = pthread_create(&fs->startup, NULL, startup_main, fs);

	if (rc)
		return -rc;
	fs->startup_running = true;
	return 0;
}

void apbfs_models_stop(struct apbfs *fs)
{
	char err[512];

	if (fs->startup_running)
		pthread_join(fs->startup, NULL);
	fs->startup_running = false;
	apbfs_order_stop_all(fs); /* their recordings into fs->learn */
	if (fs->learn && fs->opt.state_path &&
	    apb_learn_save(fs->learn, fs->opt.state_path, err, sizeof(err)))
		fuse_log(FUSE_LOG_ERR, "apbundlefs: %s\n", err);
	apb_learn_free(fs->learn);
	fs->learn = NULL;
	free(fs->pins);
	free(fs->preloads);
}

void apbfs_model_opened(struct apbfs *fs, uint32_t model)
{
	uint32_t next[APB_LEARN_SUCCESSORS];
	size_t n;

	if (!fs->learn)
		return;
	apb_learn_opened(fs->learn, model);
	n = apb_learn_successors(fs->learn, model, next,
				 fs->opt.prefetch_count < APB_LEARN_SUCCESSORS
					 ? fs->opt.prefetch_count
					 : APB_LEARN_SUCCESSORS);
	for (size_t i = 0; i < n; i++)
		(void)prefetch_head(fs, next[i], fs->opt.readahead);
}

int apbfs_models_control(struct apbfs *fs, const char *cmd, uint32_t model)
{
	uint64_t size = apb_bundle_model(fs->bundle, model)->size;

	/* The whole model is one range of the queue; it fails only when 256
	 * ranges wait already. EBUSY, not the queue's EAGAIN, which write()
	 * callers take for "would block" on a non-blocking descriptor. */
	if (strcmp(cmd, "prefetch") == 0)
		return prefetch_head(fs, model, size) == 0 ? 0 : -EBUSY;
	if (strcmp(cmd, "pin") == 0) { /* a bad chunk is EIO to the writer */
		int rc = apb_cache_pin_model(fs->cache, model, size);
		return rc == -EBADMSG ? -EIO : rc;
	}
	if (strcmp(cmd, "unpin") == 0)
		return apb_cache_unpin_model(fs->cache, model);
	return -EINVAL;
}
