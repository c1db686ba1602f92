/*
 * report.c - the /.stats JSON document and the /.metrics Prometheus text.
 *
 * Both are rendered from the same snapshot so that their numbers agree in
 * meaning; docs/USAGE.md (".stats") fixes the JSON keys, and the metric names
 * follow the Prometheus conventions (_total for counters, _bytes for sizes).
 */
#include <apbundle/report.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* part of the chunk lookups, as a share; 0 before the first. */
static double lookup_share(uint64_t part, const struct apb_cache_stats *cs)
{
	uint64_t lookups = cs->hits + cs->misses;

	return lookups ? (double)part / (double)lookups : 0.0;
}

static cJSON *cache_json(const struct apb_report_source *src,
			 const struct apb_cache_stats *cs)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "policy", src->policy);
	cJSON_AddNumberToObject(o, "chunk_size", src->chunk_size);
	cJSON_AddNumberToObject(o, "memory_limit", (double)cs->budget_bytes);
	cJSON_AddNumberToObject(o, "memory_used", (double)cs->used_bytes);
	cJSON_AddNumberToObject(o, "resident_chunks",
				(double)cs->resident_chunks);
	cJSON_AddNumberToObject(o, "hits", (double)cs->hits);
	cJSON_AddNumberToObject(o, "misses", (double)cs->misses);
	cJSON_AddNumberToObject(o, "reuse_hits", (double)cs->reuse_hits);
	cJSON_AddNumberToObject(o, "evictions", (double)cs->evictions);
	cJSON_AddNumberToObject(o, "hit_rate", lookup_share(cs->hits, cs));
	/* Reuse: the hits that saved a read of the bundle; hit_rate also
	 * counts the first read of a prefetched chunk, which only moved a
	 * read earlier. */
	cJSON_AddNumberToObject(o, "reuse_hit_rate",
				lookup_share(cs->reuse_hits, cs));
	cJSON_AddNumberToObject(o, "pinned_bytes", (double)cs->pinned_bytes);
	return o;
}

static cJSON *prefetch_json(const struct apb_report_source *src,
			    const struct apb_cache_stats *cs)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "issued", (double)cs->prefetch_issued);
	cJSON_AddNumberToObject(o, "hits", (double)cs->prefetch_hits);
	cJSON_AddNumberToObject(o, "wasted", (double)cs->prefetch_wasted);
	cJSON_AddNumberToObject(o, "issued_bytes",
				(double)cs->prefetch_issued_bytes);
	cJSON_AddNumberToObject(o, "hits_bytes",
				(double)cs->prefetch_hits_bytes);
	cJSON_AddNumberToObject(o, "wasted_bytes",
				(double)cs->prefetch_wasted_bytes);
	cJSON_AddNumberToObject(o, "unused_chunks",
				(double)cs->prefetch_unused_chunks);
	cJSON_AddNumberToObject(o, "reads_sequential",
				(double)src->io->reads_sequential);
	cJSON_AddNumberToObject(o, "reads_random",
				(double)src->io->reads_random);
	cJSON_AddNumberToObject(o, "order_chunks",
				(double)src->io->order_chunks);
	cJSON_AddNumberToObject(o, "order_hits",
				(double)src->io->order_hits);
	cJSON_AddNumberToObject(o, "order_stopped",
				(double)src->io->order_stopped);
	return o;
}

static cJSON *io_json(const struct apb_report_source *src,
		      const struct apb_cache_stats *cs)
{
	uint64_t served = src->io->bytes_served;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "backing_bytes_read",
				(double)cs->loaded_bytes);
	cJSON_AddNumberToObject(o, "read_requests",
				(double)src->io->read_requests);
	cJSON_AddNumberToObject(o, "bytes_served", (double)served);
	/* Below 1 the cache saved reads of the bundle; 1 or more, it saved
	 * none. null, not 0, before any byte is served: 0 would read as
	 * "every read saved" while a preload may already have read much. */
	if (served)
		cJSON_AddNumberToObject(o, "backing_bytes_per_byte_served",
					(double)cs->loaded_bytes /
						(double)served);
	else
		cJSON_AddNullToObject(o, "backing_bytes_per_byte_served");
	cJSON_AddNumberToObject(o, "errors",
				(double)src->io->errors);
	cJSON_AddNumberToObject(o, "checksum_errors",
				(double)src->io->checksum_errors);
	return o;
}

static cJSON *model_json(const struct apb_report_source *src, size_t i)
{
	struct apb_cache_model_stats ms;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	apb_cache_model_stats(src->cache, (uint32_t)i, &ms);
	cJSON_AddNumberToObject(o, "size",
				(double)apb_bundle_model(src->bundle, i)->size);
	cJSON_AddNumberToObject(o, "resident_bytes", (double)ms.resident_bytes);
	cJSON_AddNumberToObject(o, "hits", (double)ms.hits);
	cJSON_AddNumberToObject(o, "misses", (double)ms.misses);
	cJSON_AddNumberToObject(o, "reuse_hits", (double)ms.reuse_hits);
	cJSON_AddNumberToObject(o, "evictions", (double)ms.evictions);
	cJSON_AddNumberToObject(o, "opens",
				(double)src->opens[i]);
	cJSON_AddNumberToObject(o, "prefetch_issued", (double)ms.prefetch_issued);
	cJSON_AddNumberToObject(o, "prefetch_hits", (double)ms.prefetch_hits);
	cJSON_AddNumberToObject(o, "prefetch_wasted", (double)ms.prefetch_wasted);
	cJSON_AddBoolToObject(o, "pinned",
			      apb_cache_model_pinned(src->cache, (uint32_t)i));
	return o;
}


/* The mount: what .metrics puts in the labels of every series. */
static cJSON *mount_json(const struct apb_report_source *src)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "bundle", src->bundle_path);
	cJSON_AddStringToObject(o, "mountpoint", src->mountpoint);
	cJSON_AddNumberToObject(o, "format_version", src->format_version);
	cJSON_AddNumberToObject(o, "start_time", src->start_time);
	cJSON_AddStringToObject(o, "version", APB_VERSION);
	if (src->metrics_listen)
		cJSON_AddStringToObject(o, "metrics_listen",
					src->metrics_listen);
	else
		cJSON_AddNullToObject(o, "metrics_listen");
	return o;
}

/* Print item unformatted; a NULL item (allocation failed) fails. */
static int put_json(FILE *f, cJSON *item)
{
	char *text = item ? cJSON_PrintUnformatted(item) : NULL;
	int rc = text && fputs(text, f) >= 0 ? 0 : -1;

	cJSON_free(text);
	cJSON_Delete(item);
	return rc;
}

/* One series of .metrics. */
struct metric {
	const char *name, *type, *help;
	uint64_t value;
};

/* A section of counters shown both in .stats (under key, a bool when
 * flag) and in .metrics (as m): one table each, so the two cannot drift. */
struct series {
	const char *key;
	bool flag;
	struct metric m;
};

#define REMOTE_SERIES 6
#define DISK_TIER_SERIES 9 /* the larger: one array holds either */

/* A bundle read from a URL: what its requests cost (bundle.h). */
static void remote_series(const struct apb_bundle_remote_stats *rs,
			  struct series s[REMOTE_SERIES])
{
	const struct series t[REMOTE_SERIES] = {
		{"requests", false, {"apbundlefs_remote_requests_total", "counter",
		 "HTTP requests sent for the bundle's URL, the mount's first "
		 "one and retries included.", rs->requests}},
		{"retries", false, {"apbundlefs_remote_retries_total", "counter",
		 "Requests that repeated one after a transient failure.",
		 rs->retries}},
		{"connects", false, {"apbundlefs_remote_connects_total", "counter",
		 "TCP connections made to the server.", rs->connects}},
		{"bytes", false, {"apbundlefs_remote_bytes_total", "counter",
		 "Bytes fetched after the mount's first request.", rs->bytes}},
		{"errors", false, {"apbundlefs_remote_errors_total", "counter",
		 "Reads from the server that failed after their retries.",
		 rs->errors}},
		{"changed", true, {"apbundlefs_remote_changed", "gauge",
		 "1 once a read found the object changed or removed since "
		 "mount, else 0.", rs->changed ? 1 : 0}},
	};

	memcpy(s, t, sizeof(t));
}

/* A bundle with a disk tier (cache_dir=): what the tier did. */
static void disk_tier_series(const struct apb_bundle_disk_tier_stats *ts,
			     struct series s[DISK_TIER_SERIES])
{
	const struct series t[DISK_TIER_SERIES] = {
		{"hits", false, {"apbundlefs_disk_tier_hits_total", "counter",
		 "Extent reads served from the disk tier.", ts->hits}},
		{"misses", false, {"apbundlefs_disk_tier_misses_total", "counter",
		 "Extents fetched from the server for want of a file.",
		 ts->misses}},
		{"bytes_read", false, {"apbundlefs_disk_tier_read_bytes_total",
		 "counter", "Bytes read from the disk tier for readers.",
		 ts->bytes_read}},
		{"bytes_written", false, {"apbundlefs_disk_tier_written_bytes_total",
		 "counter", "Bytes of extent files written.", ts->bytes_written}},
		{"evictions", false, {"apbundlefs_disk_tier_evictions_total",
		 "counter", "Extent files deleted for room.", ts->evictions}},
		{"errors", false, {"apbundlefs_disk_tier_errors_total", "counter",
		 "Extent files that failed their check, and failed writes.",
		 ts->errors}},
		{"bytes_used", false, {"apbundlefs_disk_tier_used_bytes", "gauge",
		 "Bytes of extent files in cache_dir.", ts->bytes_used}},
		{"capacity", false, {"apbundlefs_disk_tier_capacity_bytes", "gauge",
		 "The disk tier's bound (cache_dir_size).", ts->capacity}},
		{"writing", true, {"apbundlefs_disk_tier_writing", "gauge",
		 "1 while the tier writes extents, 0 after a write failed.",
		 ts->writing}},
	};

	memcpy(s, t, sizeof(t));
}

static cJSON *series_json(const struct series *s, size_t n)
{
	cJSON *o = cJSON_CreateObject();

	for (size_t i = 0; i < n; i++)
		if (s[i].flag)
			cJSON_AddBoolToObject(o, s[i].key, s[i].m.value != 0);
		else
			cJSON_AddNumberToObject(o, s[i].key, (double)s[i].m.value);
	return o;
}

/*
 * The document is printed section by section, each model's object on its own
 * line, instead of as one cJSON tree: at 100,000 models the tree of the whole
 * document took 140 MB of heap to print 22 MB of text, and the daemon's
 * memory must not grow with the bundle that much (README.md, "Memory"). Every
 * object is still built and printed by cJSON; only the outer braces and
 * commas are written here. One model a line keeps `cat` readable.
 */
char *apb_report_json(const struct apb_report_source *src, size_t *len)
{
	struct apb_bundle_remote_stats rs;
	struct apb_bundle_disk_tier_stats ts;
	struct series series[DISK_TIER_SERIES];
	struct apb_cache_stats cs;
	char *text = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&text, &size);
	int rc;

	if (!f)
		return NULL;
	apb_cache_stats(src->cache, &cs);
	rc = fputs("{", f) < 0;
	if (!rc && src->mountpoint)
		rc = fputs("\"mount\":", f) < 0 || put_json(f, mount_json(src)) ||
		     fputs(",\n", f) < 0;
	rc = rc || fputs("\"cache\":", f) < 0 ||
	     put_json(f, cache_json(src, &cs)) ||
	     fputs(",\n\"prefetch\":", f) < 0 ||
	     put_json(f, prefetch_json(src, &cs)) ||
	     fputs(",\n\"io\":", f) < 0 || put_json(f, io_json(src, &cs));
	if (!rc && apb_bundle_remote_stats(src->bundle, &rs) == 0) {
		remote_series(&rs, series);
		rc = fputs(",\n\"remote\":", f) < 0 ||
		     put_json(f, series_json(series, REMOTE_SERIES));
	}
	if (!rc && apb_bundle_disk_tier_stats(src->bundle, &ts) == 0) {
		disk_tier_series(&ts, series);
		rc = fputs(",\n\"disk_tier\":", f) < 0 ||
		     put_json(f, series_json(series, DISK_TIER_SERIES));
	}
	rc = rc || fputs(",\n\"models\":{", f) < 0;
	for (size_t i = 0; !rc && i < apb_bundle_count(src->bundle); i++)
		rc = fputs(i ? ",\n" : "\n", f) < 0 ||
		     put_json(f, cJSON_CreateString(
					 apb_bundle_model(src->bundle, i)->name)) ||
		     fputc(':', f) == EOF || put_json(f, model_json(src, i));
	if (!rc)
		rc = fputs("}}\n", f) < 0;
	if (fclose(f) != 0 || rc) {
		free(text);
		return NULL;
	}
	*len = size;
	return text;
}

/* Prometheus label values escape backslash, double quote and newline. */
static void put_label(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

/*
 * The labels of a series: the mount's (bundle, mountpoint), so that one
 * Prometheus scraping several mounts, or several textfile collectors'
 * files, keeps their series apart, then name=value if name is not NULL.
 * Nothing at all for a source without a mountpoint and no name.
 */
static void put_labels(FILE *f, const struct apb_report_source *src,
		       const char *name, const char *value)
{
	if (!src->mountpoint && !name)
		return;
	fputc('{', f);
	if (src->mountpoint) {
		fputs("bundle=\"", f);
		put_label(f, src->bundle_path ? src->bundle_path : "");
		fputs("\",mountpoint=\"", f);
		put_label(f, src->mountpoint);
		fputc('"', f);
	}
	if (name) {
		fprintf(f, "%s%s=\"", src->mountpoint ? "," : "", name);
		put_label(f, value);
		fputc('"', f);
	}
	fputc('}', f);
}

static void put_metric(FILE *f, const struct apb_report_source *src,
		       const struct metric *m)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s", m->name, m->help,
		m->name, m->type, m->name);
	put_labels(f, src, NULL, NULL);
	fprintf(f, " %llu\n", (unsigned long long)m->value);
}

/* The build and the mount: who is serving, since when. */
static void put_mount_metrics(FILE *f, const struct apb_report_source *src)
{
	const struct metric format = {
		"apbundlefs_bundle_format_version", "gauge",
		"Format version of the mounted bundle (docs/FORMAT.md).",
		src->format_version};

	fputs("# HELP apbundlefs_build_info The apbundlefs version serving "
	      "the mount; always 1.\n# TYPE apbundlefs_build_info gauge\n"
	      "apbundlefs_build_info", f);
	put_labels(f, src, "version", APB_VERSION);
	fputs(" 1\n", f);
	put_metric(f, src, &format);
	fputs("# HELP apbundlefs_start_time_seconds When the mount came up, "
	      "in seconds since the epoch.\n"
	      "# TYPE apbundlefs_start_time_seconds gauge\n"
	      "apbundlefs_start_time_seconds", f);
	put_labels(f, src, NULL, NULL);
	fprintf(f, " %.3f\n", src->start_time);
}

/* The per-model series of .metrics: which value of a model each shows. */
enum model_field {
	MODEL_HITS,
	MODEL_REUSE_HITS,
	MODEL_MISSES,
	MODEL_EVICTIONS,
	MODEL_RESIDENT_BYTES,
	MODEL_OPENS,
};

static void put_model_family(FILE *f, const struct apb_report_source *src,
			     const char *name, const char *type,
			     const char *help, enum model_field field)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	for (size_t i = 0; i < apb_bundle_count(src->bundle); i++) {
		struct apb_cache_model_stats ms;
		uint64_t v = 0;
		apb_cache_model_stats(src->cache, (uint32_t)i, &ms);
		switch (field) {
		case MODEL_HITS: v = ms.hits; break;
		case MODEL_REUSE_HITS: v = ms.reuse_hits; break;
		case MODEL_MISSES: v = ms.misses; break;
		case MODEL_EVICTIONS: v = ms.evictions; break;
		case MODEL_RESIDENT_BYTES: v = ms.resident_bytes; break;
		case MODEL_OPENS: v = src->opens[i]; break;
		}
		fputs(name, f);
		put_labels(f, src, "model", apb_bundle_model(src->bundle, i)->name);
		fprintf(f, " %llu\n", (unsigned long long)v);
	}
}

static void put_series(FILE *f, const struct apb_report_source *src,
		       const struct series *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		put_metric(f, src, &s[i].m);
}

char *apb_report_metrics(const struct apb_report_source *src, size_t *len)
{
	struct apb_bundle_remote_stats rs;
	struct apb_bundle_disk_tier_stats ts;
	struct series series[DISK_TIER_SERIES];
	struct apb_cache_stats cs;
	char *text = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&text, &size);

	if (!f)
		return NULL;
	apb_cache_stats(src->cache, &cs);
	const struct apb_io_counters *io = src->io;
	if (src->mountpoint)
		put_mount_metrics(f, src);
	const struct metric global[] = {
		{"apbundlefs_cache_hits_total", "counter",
		 "Chunk lookups served from memory.", cs.hits},
		{"apbundlefs_cache_misses_total", "counter",
		 "Chunk lookups that had to load from the bundle.", cs.misses},
		{"apbundlefs_cache_reuse_hits_total", "counter",
		 "Chunk hits on a chunk an earlier lookup had used (not the "
		 "first read of a prefetched chunk): the reads the cache saved.",
		 cs.reuse_hits},
		{"apbundlefs_cache_evictions_total", "counter",
		 "Chunks dropped from memory.", cs.evictions},
		{"apbundlefs_cache_memory_used_bytes", "gauge",
		 "Chunk memory in use, loading chunks included.", cs.used_bytes},
		{"apbundlefs_cache_memory_limit_bytes", "gauge",
		 "The chunk memory budget (max_memory).", cs.budget_bytes},
		{"apbundlefs_cache_resident_chunks", "gauge",
		 "Chunks held in memory.", cs.resident_chunks},
		{"apbundlefs_cache_pinned_bytes", "gauge",
		 "Bytes of pinned models held in memory.", cs.pinned_bytes},
		{"apbundlefs_prefetch_issued_total", "counter",
		 "Chunks loaded ahead of demand.", cs.prefetch_issued},
		{"apbundlefs_prefetch_hits_total", "counter",
		 "Prefetched chunks that a read then used.", cs.prefetch_hits},
		{"apbundlefs_prefetch_wasted_total", "counter",
		 "Prefetched chunks evicted before any read.", cs.prefetch_wasted},
		{"apbundlefs_prefetch_issued_bytes_total", "counter",
		 "Bytes loaded ahead of demand.", cs.prefetch_issued_bytes},
		{"apbundlefs_prefetch_wasted_bytes_total", "counter",
		 "Prefetched bytes evicted before any read.",
		 cs.prefetch_wasted_bytes},
		{"apbundlefs_reads_sequential_total", "counter",
		 "Reads that continued a sequential stream.",
		 io->reads_sequential},
		{"apbundlefs_reads_random_total", "counter",
		 "Reads that did not continue a stream.",
		 io->reads_random},
		{"apbundlefs_prefetch_order_chunks_total", "counter",
		 "Chunks queued for prefetch by a learned load order.",
		 io->order_chunks},
		{"apbundlefs_prefetch_order_hits_total", "counter",
		 "First reads of chunks a learned load order had queued.",
		 io->order_hits},
		{"apbundlefs_prefetch_order_stopped_total", "counter",
		 "Learned-order replays stopped: the reader left the order.",
		 io->order_stopped},
		{"apbundlefs_io_backing_bytes_read_total", "counter",
		 "Bytes read from the bundle file.", cs.loaded_bytes},
		{"apbundlefs_io_read_requests_total", "counter",
		 "Read requests for model files that reached the daemon.",
		 io->read_requests},
		{"apbundlefs_io_bytes_served_total", "counter",
		 "Bytes returned to readers.", io->bytes_served},
		{"apbundlefs_io_errors_total", "counter",
		 "Reads answered with an error.", io->errors},
		{"apbundlefs_io_checksum_errors_total", "counter",
		 "Chunks that failed checksum verification.",
		 io->checksum_errors},
	};
	for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++)
		put_metric(f, src, &global[i]);
	if (apb_bundle_remote_stats(src->bundle, &rs) == 0) {
		remote_series(&rs, series);
		put_series(f, src, series, REMOTE_SERIES);
	}
	if (apb_bundle_disk_tier_stats(src->bundle, &ts) == 0) {
		disk_tier_series(&ts, series);
		put_series(f, src, series, DISK_TIER_SERIES);
	}
	put_model_family(f, src, "apbundlefs_model_hits_total", "counter",
			 "Chunk hits per model.", MODEL_HITS);
	put_model_family(f, src, "apbundlefs_model_reuse_hits_total",
			 "counter", "Chunk reuse hits per model.",
			 MODEL_REUSE_HITS);
	put_model_family(f, src, "apbundlefs_model_misses_total", "counter",
			 "Chunk misses per model.", MODEL_MISSES);
	put_model_family(f, src, "apbundlefs_model_evictions_total", "counter",
			 "Chunks of the model dropped from memory.",
			 MODEL_EVICTIONS);
	put_model_family(f, src, "apbundlefs_model_resident_bytes", "gauge",
			 "Bytes of the model held in memory.",
			 MODEL_RESIDENT_BYTES);
	put_model_family(f, src, "apbundlefs_model_opens_total", "counter",
			 "Opens of the model.", MODEL_OPENS);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	*len = size;
	return text;
}
