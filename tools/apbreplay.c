/*
 * apbreplay - replay a chunk-access trace (apbundlefs -o trace=FILE, or
 * scripts/tracegen.py) through every eviction policy of the library and
 * through Belady's OPT and A0, and print what each would have read.
 *
 * Each policy gets a real apb_cache (replay.c), so the numbers are those
 * of the code the daemon runs, not of a model of it; a policy the library
 * does not accept yet prints n/a. The policies come from the library's
 * own list (APB_EVICT_COUNT, apb_eviction_name()), so a new one shows up
 * here without a change.
 */
#include "replay.h"

#include <apbundle/size.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct args {
	const char *trace;
	uint64_t budget;
	bool budget_set;
	bool prefetch;
	bool json;
};

struct row {
	const char *name;
	bool available;     /* false: the library refused the policy */
	struct replay_result r;
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: apbreplay --budget SIZE [--prefetch on|off] [--json] TRACE\n"
"\n"
"Replay a chunk-access trace (apbundlefs -o trace=FILE, scripts/tracegen.py;\n"
"docs/FORMAT.md, \"Trace files\") through the library's cache under every\n"
"eviction policy, and through Belady's OPT and A0, with a budget of SIZE bytes\n"
"(K, M, G suffixes; at least one chunk of the trace). Per policy it prints:\n"
"\n"
"  demand       demand accesses (chunk gets) replayed\n"
"  hits         gets that found the chunk in the cache\n"
"  reuse        of those, hits on a chunk an earlier get had returned\n"
"               (a first read of a prefetched chunk is a hit, not a reuse)\n"
"  misses       gets that loaded the chunk\n"
"  read         bundle bytes loaded (prefetch included)\n"
"  served       bytes of the chunks demanded\n"
"  read/served  read / served; saved = 1 - read/served\n"
"  prefetched, wasted  chunks loaded by prefetch; of those, evicted unread\n"
"\n"
"A policy the library does not accept shows n/a. OPT replays the demand\n"
"accesses only (no prefetch): a miss evicts the chunk needed farthest ahead.\n"
"A0 (Aho, Denning, Ullman 1971) is the best online policy if accesses were\n"
"independent draws with known odds, given each chunk's demand count in the\n"
"trace: with S slots it keeps the S-1 most demanded chunks (ties: the first\n"
"demanded) and shares one slot among the rest; demand accesses only, as OPT.\n"
"\n"
"  --budget SIZE       the cache budget (max_memory) to replay with\n"
"  --prefetch on|off   replay the prefetch records, as the daemon's workers\n"
"                      run them, or skip them (default on)\n"
"  --json              one JSON object instead of the table\n"
"  --help              this text\n"
"\n"
"Exit status: 0, 1 for an unreadable or corrupt trace, 2 for a usage error.\n");
}

static int parse_args(int argc, char **argv, struct args *a)
{
	a->prefetch = true;
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			exit(0);
		} else if (strcmp(s, "--json") == 0) {
			a->json = true;
		} else if (strcmp(s, "--budget") == 0 && v) {
			if (apb_size_parse(v, &a->budget) != 0) {
				fprintf(stderr, "apbreplay: bad --budget %s: "
					"expected a size such as 64M\n", v);
				return -1;
			}
			a->budget_set = true;
			i++;
		} else if (strcmp(s, "--prefetch") == 0 && v &&
			   (strcmp(v, "on") == 0 || strcmp(v, "off") == 0)) {
			a->prefetch = strcmp(v, "on") == 0;
			i++;
		} else if (s[0] == '-' || a->trace) {
			fprintf(stderr, "apbreplay: bad argument '%s'\n", s);
			return -1;
		} else {
			a->trace = s;
		}
	}
	if (!a->trace || !a->budget_set) {
		fprintf(stderr, "apbreplay: %s is required\n",
			a->trace ? "--budget SIZE" : "a TRACE file");
		return -1;
	}
	return 0;
}

static double ratio(const struct replay_result *r)
{
	return r->served_bytes ? (double)r->loaded_bytes /
				 (double)r->served_bytes : 0.0;
}

static void print_table(const struct args *a, const struct trace *t,
			const struct row *rows, int nrows)
{
	char b[32], c[32];

	printf("trace %s: %llu records (%llu demand), %u models, chunk %s%s\n",
	       a->trace, (unsigned long long)t->records,
	       (unsigned long long)t->demand, t->model_count,
	       apb_size_format(t->chunk_size, c, sizeof(c)),
	       t->dropped ? ", accesses dropped by the writer" : "");
	printf("budget %s (%llu slots), prefetch %s\n\n",
	       apb_size_format(a->budget, b, sizeof(b)),
	       (unsigned long long)(a->budget / t->chunk_size),
	       a->prefetch ? "replayed" : "skipped");
	printf("%-7s %10s %10s %10s %10s %14s %14s %11s %7s %10s %10s\n",
	       "policy", "demand", "hits", "reuse", "misses", "read",
	       "served", "read/served", "saved", "prefetched", "wasted");
	for (int i = 0; i < nrows; i++) {
		const struct replay_result *r = &rows[i].r;

		if (!rows[i].available) {
			printf("%-7s %10s\n", rows[i].name, "n/a");
			continue;
		}
		printf("%-7s %10llu %10llu %10llu %10llu %14llu %14llu %11.4f "
		       "%6.1f%% %10llu %10llu\n", rows[i].name,
		       (unsigned long long)r->demand,
		       (unsigned long long)r->hits,
		       (unsigned long long)r->reuse_hits,
		       (unsigned long long)r->misses,
		       (unsigned long long)r->loaded_bytes,
		       (unsigned long long)r->served_bytes, ratio(r),
		       100.0 * (1.0 - ratio(r)),
		       (unsigned long long)r->prefetch_issued,
		       (unsigned long long)r->prefetch_wasted);
	}
}

static int print_json(const struct args *a, const struct trace *t,
		      const struct row *rows, int nrows)
{
	cJSON *o = cJSON_CreateObject(), *list;
	char *s;

	if (!o)
		return -ENOMEM;
	cJSON_AddStringToObject(o, "trace", a->trace);
	cJSON_AddNumberToObject(o, "records", (double)t->records);
	cJSON_AddNumberToObject(o, "demand_records", (double)t->demand);
	cJSON_AddNumberToObject(o, "dropped", (double)t->dropped);
	cJSON_AddBoolToObject(o, "complete", t->complete);
	cJSON_AddNumberToObject(o, "models", t->model_count);
	cJSON_AddNumberToObject(o, "chunk_size", t->chunk_size);
	cJSON_AddNumberToObject(o, "budget_bytes", (double)a->budget);
	cJSON_AddNumberToObject(o, "slots",
				(double)(a->budget / t->chunk_size));
	cJSON_AddBoolToObject(o, "prefetch", a->prefetch);
	list = cJSON_AddArrayToObject(o, "policies");
	for (int i = 0; list && i < nrows; i++) {
		const struct replay_result *r = &rows[i].r;
		cJSON *p = cJSON_CreateObject();

		if (!p || !cJSON_AddItemToArray(list, p))
			break;
		cJSON_AddStringToObject(p, "policy", rows[i].name);
		cJSON_AddBoolToObject(p, "available", rows[i].available);
		if (!rows[i].available)
			continue;
		cJSON_AddNumberToObject(p, "demand", (double)r->demand);
		cJSON_AddNumberToObject(p, "hits", (double)r->hits);
		cJSON_AddNumberToObject(p, "reuse_hits", (double)r->reuse_hits);
		cJSON_AddNumberToObject(p, "misses", (double)r->misses);
		cJSON_AddNumberToObject(p, "read_bytes",
					(double)r->loaded_bytes);
		cJSON_AddNumberToObject(p, "served_bytes",
					(double)r->served_bytes);
		cJSON_AddNumberToObject(p, "read_per_served", ratio(r));
		cJSON_AddNumberToObject(p, "saved", 1.0 - ratio(r));
		cJSON_AddNumberToObject(p, "prefetch_issued",
					(double)r->prefetch_issued);
		cJSON_AddNumberToObject(p, "prefetch_wasted",
					(double)r->prefetch_wasted);
	}
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s)
		return -ENOMEM;
	printf("%s\n", s);
	free(s);
	return 0;
}

int main(int argc, char **argv)
{
	struct row rows[APB_EVICT_COUNT + 2];
	char err[512] = "", warn[512] = "", c[32];
	struct args a = {0};
	struct trace t;
	int nrows = 0, rc;

	if (parse_args(argc, argv, &a) != 0) {
		usage(stderr);
		return 2;
	}
	if (trace_open(a.trace, &t, err, sizeof(err), warn, sizeof(warn))) {
		fprintf(stderr, "apbreplay: %s: %s\n", a.trace, err);
		return 1;
	}
	if (warn[0])
		fprintf(stderr, "apbreplay: %s: %s\n", a.trace, warn);
	if (a.budget < t.chunk_size || a.budget / t.chunk_size > APB_CACHE_MAX_SLOTS) {
		fprintf(stderr, "apbreplay: --budget must hold from 1 to 2^30 "
			"chunks of the trace's %s\n",
			apb_size_format(t.chunk_size, c, sizeof(c)));
		trace_close(&t);
		return 2;
	}
	for (int p = 0; p < APB_EVICT_COUNT; p++) {
		struct row *w = &rows[nrows++];

		w->name = apb_eviction_name((enum apb_eviction)p);
		rc = replay_policy(&t, (enum apb_eviction)p, a.budget,
				   a.prefetch, &w->r);
		/* The budget and chunk size are valid (checked above): a
		 * refusal is the policy's. */
		w->available = rc == 0;
		if (rc && rc != -EINVAL)
			goto fail;
	}
	rows[nrows].name = "OPT";
	rows[nrows].available = true;
	rc = replay_opt(&t, a.budget, &rows[nrows++].r);
	if (rc)
		goto fail;
	rows[nrows].name = "A0";
	rows[nrows].available = true;
	rc = replay_a0(&t, a.budget, &rows[nrows++].r);
	if (rc)
		goto fail;
	if (a.json)
		rc = print_json(&a, &t, rows, nrows);
	else
		print_table(&a, &t, rows, nrows);
	if (rc)
		goto fail;
	trace_close(&t);
	return 0;
fail:
	fprintf(stderr, "apbreplay: %s: %s\n", a.trace, strerror(-rc));
	trace_close(&t);
	return 1;
}
