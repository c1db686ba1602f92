/*
 * tracefile.c - see tracefile.h. Checks, in order: the fixed header, the
 * model table, the file's length against the record count, then every
 * record (kind, count, model, chunk inside its model, time order), so the
 * replay that follows never meets a record it cannot apply.
 */
#include "tracefile.h"

#include <apbundle/name.h>

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(char *err, size_t err_len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int map_file(const char *path, struct trace *t, char *err,
		    size_t err_len)
{
	struct stat st;
	void *p;
	int fd = open(path, O_RDONLY | O_CLOEXEC), e;

	if (fd < 0 || fstat(fd, &st) != 0) {
		e = errno;
		if (fd >= 0)
			close(fd);
		snprintf(err, err_len, "%s", strerror(e));
		return -e;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return fail(err, err_len, "not a regular file");
	}
	t->map_bytes = (size_t)st.st_size;
	if (t->map_bytes == 0) {
		close(fd);
		return 0;
	}
	p = mmap(NULL, t->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
	e = errno;
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(err, err_len, "%s", strerror(e));
		return -e;
	}
	t->map = p;
	return 0;
}

static int check_header(struct trace *t, char *err, size_t err_len)
{
	const unsigned char *h = t->map;
	uint32_t v, rb;

	if (t->map_bytes < APB_TRACE_HEADER_FIXED)
		return fail(err, err_len, "file is %zu bytes, shorter than the "
			    "%u-byte trace header", t->map_bytes,
			    APB_TRACE_HEADER_FIXED);
	if (memcmp(h, APB_TRACE_MAGIC, 8) != 0)
		return fail(err, err_len, "not a trace file (bad magic)");
	v = apb_trace_get_u32(h + APB_TRACE_OFF_VERSION);
	if (v != APB_TRACE_VERSION)
		return fail(err, err_len, "unsupported trace version %u (this "
			    "apbreplay reads %u)", v, APB_TRACE_VERSION);
	rb = apb_trace_get_u32(h + APB_TRACE_OFF_RECORD_BYTES);
	if (rb != APB_TRACE_RECORD_BYTES)
		return fail(err, err_len, "record size %u is not %u", rb,
			    APB_TRACE_RECORD_BYTES);
	t->header_bytes = apb_trace_get_u32(h + APB_TRACE_OFF_HEADER_BYTES);
	t->chunk_size = apb_trace_get_u32(h + APB_TRACE_OFF_CHUNK_SIZE);
	t->model_count = apb_trace_get_u32(h + APB_TRACE_OFF_MODEL_COUNT);
	t->flags = apb_trace_get_u32(h + APB_TRACE_OFF_FLAGS);
	t->records = apb_trace_get_u64(h + APB_TRACE_OFF_RECORDS);
	t->dropped = apb_trace_get_u64(h + APB_TRACE_OFF_DROPPED);
	t->max_bytes = apb_trace_get_u64(h + APB_TRACE_OFF_MAX_BYTES);
	t->start_realtime_ns = apb_trace_get_u64(h + APB_TRACE_OFF_START_NS);
	t->complete = t->flags & APB_TRACE_F_COMPLETE;
	if (t->chunk_size < 4096 || t->chunk_size % 4096)
		return fail(err, err_len, "chunk size %u is not a multiple of "
			    "4096 of at least 4096", t->chunk_size);
	if (t->model_count > APB_TRACE_MODEL_MAX + 1)
		return fail(err, err_len, "model count %u exceeds the limit of "
			    "%u", t->model_count, APB_TRACE_MODEL_MAX + 1);
	if (t->flags & ~APB_TRACE_F_KNOWN)
		return fail(err, err_len, "unknown flags 0x%08x", t->flags);
	if (t->header_bytes < APB_TRACE_HEADER_FIXED || t->header_bytes % 16)
		return fail(err, err_len, "header length %llu is not a "
			    "multiple of 16 of at least %u",
			    (unsigned long long)t->header_bytes,
			    APB_TRACE_HEADER_FIXED);
	if (t->header_bytes > t->map_bytes)
		return fail(err, err_len, "truncated: the header is %llu "
			    "bytes, the file %zu",
			    (unsigned long long)t->header_bytes, t->map_bytes);
	return 0;
}

static int check_models(struct trace *t, char *err, size_t err_len)
{
	uint64_t at = APB_TRACE_HEADER_FIXED;
	bool names = t->flags & APB_TRACE_F_NAMES;

	t->model_size = calloc(t->model_count ? t->model_count : 1,
			       sizeof(*t->model_size));
	if (!t->model_size)
		return fail(err, err_len, "out of memory");
	for (uint32_t i = 0; i < t->model_count; i++) {
		uint32_t len;

		if (t->header_bytes - at < 12)
			return fail(err, err_len, "model table: entry %u runs "
				    "past the header (%llu bytes)", i,
				    (unsigned long long)t->header_bytes);
		t->model_size[i] = apb_trace_get_u64(t->map + at);
		len = apb_trace_get_u32(t->map + at + 8);
		if (t->model_size[i] >> 53)
			return fail(err, err_len, "model table: model %u size "
				    "%llu is above 2^53", i,
				    (unsigned long long)t->model_size[i]);
		if (len > APB_NAME_MAX || (!names && len))
			return fail(err, err_len, "model table: model %u has a "
				    "name of %u bytes%s", i, len, names ?
				    " (the limit is 4096)" :
				    " but the flags say no names");
		at += (12 + (uint64_t)len + 7) & ~(uint64_t)7;
		if (at > t->header_bytes)
			return fail(err, err_len, "model table: entry %u runs "
				    "past the header (%llu bytes)", i,
				    (unsigned long long)t->header_bytes);
	}
	return 0;
}

/* The file's length against the header's record count. */
static int check_length(struct trace *t, char *err, size_t err_len,
			char *warn, size_t warn_len)
{
	uint64_t body = t->map_bytes - t->header_bytes;
	uint64_t whole = body / APB_TRACE_RECORD_BYTES;

	if (!t->complete) {
		snprintf(warn, warn_len, "the trace was never finalized (the "
			 "daemon did not unmount cleanly?); replaying the "
			 "%llu whole records it holds",
			 (unsigned long long)whole);
		t->records = whole;
		return 0;
	}
	if (t->records > whole)
		return fail(err, err_len, "truncated: the header says %llu "
			    "records (%llu bytes), the file holds %llu bytes "
			    "of records", (unsigned long long)t->records,
			    (unsigned long long)(t->records *
						 APB_TRACE_RECORD_BYTES),
			    (unsigned long long)body);
	if (t->records * APB_TRACE_RECORD_BYTES != body)
		return fail(err, err_len, "%llu bytes after the last of the "
			    "%llu records the header counts",
			    (unsigned long long)(body - t->records *
						 APB_TRACE_RECORD_BYTES),
			    (unsigned long long)t->records);
	return 0;
}

static int check_records(struct trace *t, char *err, size_t err_len)
{
	uint64_t prev = 0;

	t->demand = 0;
	for (uint64_t i = 0; i < t->records; i++) {
		struct apb_trace_record r;

		trace_record(t, i, &r);
		if (r.model >= t->model_count)
			return fail(err, err_len, "record %llu: model %u is not "
				    "below the model count %u",
				    (unsigned long long)i, r.model,
				    t->model_count);
		if (r.chunk >= trace_model_chunks(t, r.model))
			return fail(err, err_len, "record %llu: chunk %llu of "
				    "model %u is past its end (%llu chunks)",
				    (unsigned long long)i,
				    (unsigned long long)r.chunk, r.model,
				    (unsigned long long)trace_model_chunks(
					    t, r.model));
		if (r.kind == APB_TRACE_KIND_DEMAND && r.count != 1)
			return fail(err, err_len, "record %llu: a demand record "
				    "with count %u (must be 1)",
				    (unsigned long long)i, r.count);
		if (r.kind == APB_TRACE_KIND_PREFETCH && r.count == 0)
			return fail(err, err_len, "record %llu: a prefetch "
				    "record with count 0",
				    (unsigned long long)i);
		if (r.time_ns < prev)
			return fail(err, err_len, "record %llu: time %llu ns is "
				    "before the previous record's %llu ns",
				    (unsigned long long)i,
				    (unsigned long long)r.time_ns,
				    (unsigned long long)prev);
		prev = r.time_ns;
		t->demand += r.kind == APB_TRACE_KIND_DEMAND;
	}
	return 0;
}

int trace_open(const char *path, struct trace *t, char *err, size_t err_len,
	       char *warn, size_t warn_len)
{
	int rc;

	memset(t, 0, sizeof(*t));
	warn[0] = '\0';
	rc = map_file(path, t, err, err_len);
	if (rc == 0)
		rc = check_header(t, err, err_len);
	if (rc == 0)
		rc = check_models(t, err, err_len);
	if (rc == 0)
		rc = check_length(t, err, err_len, warn, warn_len);
	if (rc == 0)
		rc = check_records(t, err, err_len);
	if (rc)
		trace_close(t);
	return rc;
}

void trace_close(struct trace *t)
{
	if (t->map)
		munmap((void *)t->map, t->map_bytes);
	free(t->model_size);
	memset(t, 0, sizeof(*t));
}

void trace_record(const struct trace *t, uint64_t i,
		  struct apb_trace_record *r)
{
	apb_trace_unpack(t->map + t->header_bytes +
			 i * APB_TRACE_RECORD_BYTES, r);
}

uint64_t trace_model_chunks(const struct trace *t, uint32_t model)
{
	return (t->model_size[model] + t->chunk_size - 1) / t->chunk_size;
}

uint64_t trace_chunk_len(const struct trace *t, uint32_t model, uint64_t chunk)
{
	uint64_t size = t->model_size[model], at = chunk * t->chunk_size;

	if (at >= size)
		return 0;
	return size - at < t->chunk_size ? size - at : t->chunk_size;
}
