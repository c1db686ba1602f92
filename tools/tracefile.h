/*
 * tracefile.h - read a trace file (docs/FORMAT.md, "Trace files") for
 * apbreplay: map it, check every rule of the format and every record once,
 * then hand out records by index. A trace that breaks a rule is refused
 * with one message naming what is wrong.
 */
#ifndef APBREPLAY_TRACEFILE_H
#define APBREPLAY_TRACEFILE_H

#include <apbundle/trace.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct trace {
	/* The header. */
	uint32_t chunk_size;
	uint32_t model_count;
	uint32_t flags;            /* APB_TRACE_F_* */
	uint64_t dropped;          /* accesses the writer did not record */
	uint64_t max_bytes;
	uint64_t start_realtime_ns;
	/* What the reader found. */
	uint64_t records;          /* whole records to replay */
	uint64_t demand;           /* of those, demand records */
	uint64_t *model_size;      /* [model_count], bytes */
	bool complete;             /* the writer finalized the header */
	/* The file, mapped read-only. */
	const unsigned char *map;
	size_t map_bytes;
	uint64_t header_bytes;
};

/*
 * Open and check path. 0, or -errno / -EINVAL with the reason in err
 * (e.g. "truncated: the header says 100 records (1600 bytes), the file
 * holds 1584 bytes of records"). A trace whose writer never finalized it
 * (killed) is read up to its last whole record; *warn says so then.
 */
int trace_open(const char *path, struct trace *t, char *err, size_t err_len,
	       char *warn, size_t warn_len);
void trace_close(struct trace *t);

/* Record i < t->records. */
void trace_record(const struct trace *t, uint64_t i,
		  struct apb_trace_record *r);

/* Chunks of model, and the bytes of one of its chunks. */
uint64_t trace_model_chunks(const struct trace *t, uint32_t model);
uint64_t trace_chunk_len(const struct trace *t, uint32_t model,
			 uint64_t chunk);

/* The key of a chunk in maps: model and chunk as record word 1 packs them. */
static inline uint64_t trace_key(uint32_t model, uint64_t chunk)
{
	return (uint64_t)model << APB_TRACE_CHUNK_BITS | chunk;
}

#endif
