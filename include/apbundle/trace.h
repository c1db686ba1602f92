/*
 * trace.h - the bytes of a chunk-access trace file (docs/FORMAT.md, "Trace
 * files"): what `apbundlefs -o trace=FILE` writes (fs/trace.c) and what
 * `apbreplay` and scripts/tracegen.py read or write. Constants and the
 * packing of one record only; no code of the library uses it.
 *
 * A file is a header of APB_TRACE_HEADER_FIXED bytes, a model table (per
 * model: u64 size, u32 name length, the name, zeros to a multiple of 8),
 * zeros to header_bytes (a multiple of 16), then records of
 * APB_TRACE_RECORD_BYTES. All integers are little-endian.
 */
#ifndef APBUNDLE_TRACE_H
#define APBUNDLE_TRACE_H

#include <stdint.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_TRACE_MAGIC "APBTRACE"     /* 8 bytes, no NUL */
#define APB_TRACE_VERSION 1u
#define APB_TRACE_HEADER_FIXED 64u     /* then the model table */
#define APB_TRACE_RECORD_BYTES 16u

/* Header field offsets. */
#define APB_TRACE_OFF_VERSION 8u       /* u32 */
#define APB_TRACE_OFF_HEADER_BYTES 12u /* u32: the first record's offset */
#define APB_TRACE_OFF_RECORD_BYTES 16u /* u32: 16 */
#define APB_TRACE_OFF_CHUNK_SIZE 20u   /* u32 */
#define APB_TRACE_OFF_MODEL_COUNT 24u  /* u32 */
#define APB_TRACE_OFF_FLAGS 28u        /* u32: APB_TRACE_F_* */
#define APB_TRACE_OFF_RECORDS 32u      /* u64: set when complete */
#define APB_TRACE_OFF_DROPPED 40u      /* u64: accesses not recorded */
#define APB_TRACE_OFF_MAX_BYTES 48u    /* u64: the bound (trace_max) */
#define APB_TRACE_OFF_START_NS 56u     /* u64: CLOCK_REALTIME of time 0 */

#define APB_TRACE_F_COMPLETE 0x1u      /* closed cleanly: records is exact */
#define APB_TRACE_F_NAMES 0x2u         /* the model table holds names */
#define APB_TRACE_F_FULL 0x4u          /* recording stopped at the bound */
#define APB_TRACE_F_WRITE_ERROR 0x8u   /* recording stopped: a write failed */
#define APB_TRACE_F_KNOWN 0xfu

/* Record fields: word 0 = time | count << 56 | kind << 63,
 * word 1 = chunk | model << 44. */
#define APB_TRACE_TIME_BITS 56
#define APB_TRACE_TIME_MAX ((UINT64_C(1) << APB_TRACE_TIME_BITS) - 1)
#define APB_TRACE_COUNT_MAX 127u
#define APB_TRACE_CHUNK_BITS 44
#define APB_TRACE_CHUNK_MAX ((UINT64_C(1) << APB_TRACE_CHUNK_BITS) - 1)
#define APB_TRACE_MODEL_MAX ((UINT32_C(1) << 20) - 1)

#define APB_TRACE_KIND_DEMAND 0u
#define APB_TRACE_KIND_PREFETCH 1u

struct apb_trace_record {
	uint64_t time_ns;  /* since the trace began; non-decreasing */
	uint32_t model;    /* <= APB_TRACE_MODEL_MAX */
	uint32_t count;    /* chunks: 1 for demand, 1 .. 127 for prefetch */
	uint64_t chunk;    /* <= APB_TRACE_CHUNK_MAX */
	uint32_t kind;     /* APB_TRACE_KIND_* */
};

static inline void apb_trace_put_u32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static inline void apb_trace_put_u64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t apb_trace_get_u32(const unsigned char *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline uint64_t apb_trace_get_u64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* The 16 bytes of r; the caller keeps every field within its bits. */
static inline void apb_trace_pack(const struct apb_trace_record *r,
				  unsigned char out[APB_TRACE_RECORD_BYTES])
{
	uint64_t t = r->time_ns > APB_TRACE_TIME_MAX ? APB_TRACE_TIME_MAX
						     : r->time_ns;

	apb_trace_put_u64(out, t | (uint64_t)r->count << 56 |
			       (uint64_t)r->kind << 63);
	apb_trace_put_u64(out + 8, r->chunk |
				   (uint64_t)r->model << APB_TRACE_CHUNK_BITS);
}

static inline void apb_trace_unpack(const unsigned char in[APB_TRACE_RECORD_BYTES],
				    struct apb_trace_record *r)
{
	uint64_t w0 = apb_trace_get_u64(in), w1 = apb_trace_get_u64(in + 8);

	r->time_ns = w0 & APB_TRACE_TIME_MAX;
	r->count = (uint32_t)(w0 >> 56) & APB_TRACE_COUNT_MAX;
	r->kind = (uint32_t)(w0 >> 63);
	r->chunk = w1 & APB_TRACE_CHUNK_MAX;
	r->model = (uint32_t)(w1 >> APB_TRACE_CHUNK_BITS);
}

#ifdef __cplusplus
}
#endif

#endif
