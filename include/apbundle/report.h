/*
 * report.h - render a mount's counters as the /.stats JSON document
 * (docs/USAGE.md, ".stats"; built with cJSON) and as Prometheus text for
 * /.metrics.
 *
 * The report takes a snapshot of the cache counters under the cache's lock;
 * the caller passes its own counters already read (the daemon loads its
 * atomics into a struct apb_io_counters just before). The two are not one
 * atomic snapshot; a concurrent read may show up in one and not yet the
 * other. Plain integers here, not atomics, so that the header is valid C++.
 */
#ifndef APBUNDLE_REPORT_H
#define APBUNDLE_REPORT_H

#include <stdint.h>

#include "api.h"
#include "bundle.h"
#include "cache.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Counters kept by the daemon rather than the cache, as read just now. */
struct apb_io_counters {
	uint64_t read_requests;    /* reads of models that reached us */
	uint64_t bytes_served;     /* bytes replied to readers */
	uint64_t errors;           /* reads answered with an error */
	uint64_t checksum_errors;  /* chunks failing verification */
	uint64_t reads_sequential; /* reads continuing a stream */
	uint64_t reads_random;     /* reads starting a stream */
	uint64_t order_chunks;     /* queued by learned load orders */
	uint64_t order_hits;       /* first reads an order queued before */
	uint64_t order_stopped;    /* replays the reader left */
};

struct apb_report_source {
	const struct apb_bundle *bundle;
	struct apb_cache *cache;
	const char *policy;                 /* "lru" or "lfu" */
	uint32_t chunk_size;
	const struct apb_io_counters *io;
	const uint64_t *opens;              /* per model, bundle order */
	/* The mount, for .stats' "mount" section and the labels of every
	 * .metrics series; NULL mountpoint: neither. */
	const char *bundle_path;            /* as shown: a URL's password *** */
	const char *mountpoint;
	uint32_t format_version;            /* 1 or 2 (docs/FORMAT.md) */
	/* when the mount came up, in seconds since the epoch: a fixed value,
	 * not an uptime, so that documents rendered with nothing happening
	 * between them stay byte for byte the same (the daemon shares them) */
	double start_time;
	const char *metrics_listen;         /* "ADDR:PORT" or NULL: off */
};

/* Each returns a malloc()ed NUL-terminated document the caller frees, and
 * stores its length in *len; NULL when memory runs out. */
APB_API
char *apb_report_json(const struct apb_report_source *src, size_t *len);
APB_API
char *apb_report_metrics(const struct apb_report_source *src, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
