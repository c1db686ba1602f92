/*
 * report.h - render a mount's counters as the /.stats JSON document
 * (docs/USAGE.md, ".stats"; built with cJSON) and as Prometheus text for
 * /.metrics.
 *
 * The report takes a snapshot: cache counters under the cache's lock, the
 * daemon's own counters with atomic loads. The two are not one atomic
 * snapshot; a concurrent read may show up in one and not yet the other.
 */
#ifndef APBUNDLE_REPORT_H
#define APBUNDLE_REPORT_H

#include <stdatomic.h>
#include <stdint.h>

#include "bundle.h"
#include "cache.h"

/* Counters kept by the daemon rather than the cache. */
struct apb_io_counters {
	atomic_uint_fast64_t read_requests;   /* reads of models that reached us */
	atomic_uint_fast64_t bytes_served;    /* bytes replied to readers */
	atomic_uint_fast64_t errors;          /* reads answered with an error */
	atomic_uint_fast64_t checksum_errors; /* chunks failing verification */
	atomic_uint_fast64_t reads_sequential; /* reads continuing a stream */
	atomic_uint_fast64_t reads_random;     /* reads starting a stream */
};

struct apb_report_source {
	const struct apb_bundle *bundle;
	struct apb_cache *cache;
	const char *policy;                 /* "lru" or "lfu" */
	uint32_t chunk_size;
	const struct apb_io_counters *io;
	const atomic_uint_fast64_t *opens;  /* per model, bundle order */
};

/* Each returns a malloc()ed NUL-terminated document the caller frees, and
 * stores its length in *len; NULL when memory runs out. */
char *apb_report_json(const struct apb_report_source *src, size_t *len);
char *apb_report_metrics(const struct apb_report_source *src, size_t *len);

#endif
