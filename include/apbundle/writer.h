/*
 * writer.h - write .apbundle files and extract models from them, atomically.
 *
 * Two writers: apb_writer_create_bundle(), which turns an input list
 * (inputs.h: model names and source paths) into a bundle, and
 * apb_writer_extract_model(), which copies one model out of a bundle.
 *
 * Both writers are atomic: they write a temporary file next to the target
 * ("OUT.tmp.XXXXXX"), fsync it, rename it over the target and fsync the
 * directory. On any failure, including cancellation, the temporary file is
 * removed and the target is left as it was. Nothing is created before every
 * name and every input has been checked.
 *
 * What is at the target already: nothing or a regular file, which is
 * replaced and whose mode is kept, and its owner and group as far as the
 * caller may set them (the set-ID bits only with them). A symbolic link
 * (not followed), directory, FIFO, device or socket is refused before any
 * work and again before the rename, with err saying what it is: -ELOOP,
 * -EISDIR, -EINVAL.
 *
 * Output is deterministic: the same names, bytes and options give a
 * byte-identical bundle (models sorted by name with strcmp(), unformatted
 * JSON, no timestamps), whatever the number of threads.
 *
 * Error reporting: every function returning int returns 0 or a negative
 * errno and, on failure, writes one line into err (no trailing newline)
 * that starts with the file concerned: "models/x.bin: No such file or
 * directory". A command prints it behind its own name.
 *
 * Thread safety: no global state. Different writes are independent; an
 * input list must not change while a bundle is written from it. A format 2
 * write runs its own worker threads and joins them before returning.
 */
#ifndef APBUNDLE_WRITER_H
#define APBUNDLE_WRITER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "apbundle/inputs.h"

#ifdef __cplusplus
extern "C" {
#endif

struct apb_bundle;

/* ------------------------------------------------------------------ */
/* Writing                                                             */
/* ------------------------------------------------------------------ */

#define APB_WRITER_FORMAT_DEFAULT 2

enum apb_writer_compression {
	APB_WRITER_STORE = 0, /* bytes stored as they are */
	APB_WRITER_ZSTD = 1,  /* zstd per block (format 2 only) */
};

/* Called with bytes done so far and the total; total may be 0. */
typedef void (*apb_writer_progress_fn)(void *arg, uint64_t done,
				       uint64_t total);

struct apb_writer_options {
	unsigned format;                          /* 1 or 2 */
	enum apb_writer_compression compression;
	int compression_level;                    /* zstd 1..22; 0 = 3 */
	uint64_t block_size;                      /* format 2; 0 = 64 KiB */
	unsigned threads;                         /* format 2 workers;
						   * 0 = online CPUs */
	apb_writer_progress_fn progress;          /* may be NULL */
	void *progress_arg;
	/* When non-NULL and *cancel becomes non-zero (e.g. set by a signal
	 * handler), the write stops at the next buffer, removes its temporary
	 * file and returns -EINTR. */
	const volatile sig_atomic_t *cancel;
};

/* Defaults: format APB_WRITER_FORMAT_DEFAULT, stored, no callbacks. */
APB_API
void apb_writer_options_init(struct apb_writer_options *o);

/*
 * Check options without writing anything, so a command can reject them as
 * a usage error. Returns 0 or -EINVAL: a value out of range (format not 1
 * or 2, block size not a multiple of 4096 up to 16 MiB, zstd level not
 * 0..22), or compression or a block size asked of format 1.
 */
APB_API
int apb_writer_options_check(const struct apb_writer_options *o, char *err,
			     size_t err_len);

/*
 * Write the inputs as a bundle at out_path, in format o->format
 * (docs/FORMAT.md). Before anything is created: options are checked, every
 * name passes apb_name_check(), the sorted names pass apb_names_check_set()
 * (a name given twice is reported with both paths), and every input is opened
 * and must be a regular file. Then each input is read exactly once: its bytes
 * are copied (format 2: cut into blocks, hashed per block and compressed by
 * o->threads workers) and hashed (XXH3-64) in the same pass. An input whose
 * size changes between listing and copying fails the write. Zero inputs give
 * a valid empty bundle (model_count 0). The bytes written depend only on the
 * names, the inputs' bytes, the format, the compression, its level and the
 * block size, never on o->threads.
 *
 * Errors: those of apb_writer_options_check(), -EINVAL for names, the
 * errno of a failing open/read/write/fsync/rename (e.g. -ENOSPC), -EIO for
 * an input that changed size, -ELOOP for an input that is the existing
 * file at out_path (a bundle is never packed into its successor), -EISDIR
 * when out_path is a directory, -ELOOP for a symbolic link and -EINVAL
 * for a FIFO, device or socket at out_path, -EFBIG for sizes a JSON manifest cannot
 * hold exactly (over 2^53 bytes), too many models or (format 2) more than
 * 2^24 blocks, -ENOMEM, -EINTR when cancelled.
 */
APB_API
int apb_writer_create_bundle(const char *out_path,
			     const struct apb_input_list *inputs,
			     const struct apb_writer_options *o, char *err,
			     size_t err_len);

/*
 * Copy model index of b to out_path, atomically, hashing while copying.
 * Reads go through apb_bundle_preadv(), so every version 2 block is
 * checked against its own XXH3 (and decompressed) on the way.
 * label is how messages name the bundle (usually its path): a read error
 * reads "LABEL: model 'NAME': Input/output error", a write error names
 * out_path. A block that fails its checksum gives -EBADMSG and
 * "LABEL: model 'NAME' block K: checksum mismatch" (K counts from 0 within
 * the model). When the model has a checksum and the bytes do not match
 * it, -EBADMSG with both checksums in err ("LABEL: model 'NAME': checksum
 * xxh3-64:... expected xxh3-64:..."). On any failure nothing is left at
 * out_path. Only o->progress, o->progress_arg and o->cancel are used (o
 * may be NULL). Returns 0, -EBADMSG, -EINTR, or the errno of a failing
 * read or write.
 */
APB_API
int apb_writer_extract_model(const struct apb_bundle *b, const char *label,
			     size_t index, const char *out_path,
			     const struct apb_writer_options *o, char *err,
			     size_t err_len);

/*
 * As apb_writer_extract_model(), to the open descriptor fd (standard
 * output, a pipe) instead of a file: out_label names it in messages
 * ("standard output: Broken pipe"). Not atomic: the model is written as
 * it is read and checked, so on a failure, checksum mismatch included, the
 * bytes before the failing piece have been written already and only the
 * return value says the copy is bad. fd is neither synced nor closed.
 */
APB_API
int apb_writer_extract_model_fd(const struct apb_bundle *b, const char *label,
				size_t index, int fd, const char *out_label,
				const struct apb_writer_options *o, char *err,
				size_t err_len);

/*
 * Check model index of b without writing anything: read it exactly as
 * apb_writer_extract_model() does, with the same checks, results and
 * messages. A model without a checksum (aprender's layout) is only read.
 */
APB_API
int apb_writer_check_model(const struct apb_bundle *b, const char *label,
			   size_t index, const struct apb_writer_options *o,
			   char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
