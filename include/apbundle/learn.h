/*
 * learn.h - which models are opened, and which after which.
 *
 * The daemon tells this module every open of a model. It counts opens per
 * model and transitions (the model opened before this one, across all
 * readers, to this one), and answers: which models most often follow this
 * one (to prefetch them), and which models are opened most (to preload them
 * at the next mount). Counts survive restarts in a state file, a JSON
 * document written atomically. Loading tells a missing (or empty) file
 * from one that is not a state file; what to do with either is the
 * caller's choice (the daemon refuses to mount on the second, which
 * saving would replace).
 *
 * Memory is bounded: each model keeps at most APB_LEARN_SUCCESSORS
 * successors; a new successor replaces the least counted one.
 *
 * It also keeps each model's learned load order (order.h): the order in
 * which a session of the model first read its chunks, at most
 * APB_ORDER_CHUNKS chunks, for the chunk size given to
 * apb_learn_set_chunk_size(). A session's recording replaces the learned
 * order when it is complete enough (apb_learn_offer_order()). Orders are
 * saved in the state file with the chunk size and the model's size, and a
 * loaded order whose chunk size or model size differs from this mount's
 * is dropped (it would name the wrong bytes).
 *
 * A model index past the end of the bundle is ignored (no effect, 0).
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef APBUNDLE_LEARN_H
#define APBUNDLE_LEARN_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "bundle.h"
#include "order.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_LEARN_SUCCESSORS 8

struct apb_learn;

/* For the models of bundle (names are matched in state files). */
APB_API
int apb_learn_new(const struct apb_bundle *bundle, struct apb_learn **out);
APB_API
void apb_learn_free(struct apb_learn *l);

/* Record an open of model: opens[model]++, and the transition from the
 * previously opened model (if any, and if different) to this one. */
APB_API
void apb_learn_opened(struct apb_learn *l, uint32_t model);

/* Up to max models that most often followed model, most frequent first
 * (ties: lower model index first); returns how many. */
APB_API
size_t apb_learn_successors(struct apb_learn *l, uint32_t model,
			    uint32_t *out, size_t max);

/* Up to max models by open count, most opened first, models never opened
 * left out (ties: lower index first); returns how many. */
APB_API
size_t apb_learn_popular(struct apb_learn *l, uint32_t *out, size_t max);

APB_API
uint64_t apb_learn_opens(struct apb_learn *l, uint32_t model);

/* The chunk size that load orders are in; call before apb_learn_load().
 * 0 (the default) keeps no orders: loading drops them, offering fails. */
APB_API
void apb_learn_set_chunk_size(struct apb_learn *l, uint32_t chunk_size);

/* A copy of model's learned order (malloc()ed, caller frees; NULL with *n
 * 0 when it has none). 0 or -ENOMEM. */
APB_API
int apb_learn_order(struct apb_learn *l, uint32_t model,
		    struct apb_order_run **runs, size_t *n);

/*
 * Offer runs[0..n), a session's recording of model, as its learned order.
 * It replaces the learned order when that has no more than twice its
 * chunks (so a run that read only a model's header, after one that loaded
 * it, does not wipe out what the load taught), or when it has
 * APB_ORDER_CHUNKS chunks. Returns 1 (replaced), 0 (kept the old one, or
 * n 0), -EINVAL (no chunk size set, a bad model, runs that apb_order_new()
 * would refuse for the model's size), or -ENOMEM.
 */
APB_API
int apb_learn_offer_order(struct apb_learn *l, uint32_t model,
			  const struct apb_order_run *runs, size_t n);

/*
 * Merge counts (and replace load orders) from the state file at path
 * (names not in this bundle are skipped; an empty file merges nothing). Never blocks on a FIFO. Returns
 * 0, -ENOENT if there is no file, -EISDIR for a directory, -EFBIG for a
 * file over 64 MiB, -EINVAL for a FIFO or device or a file that is not a
 * state file ("PATH: not an apbundlefs state file: REASON"), or a read
 * errno. On error err holds one line that starts with path, and nothing
 * is merged.
 */
APB_API
int apb_learn_load(struct apb_learn *l, const char *path, char *err,
		   size_t err_len);

/* Write the state file atomically (temporary file, fsync, rename); counts
 * above 2^53 are written as 2^53 so that JSON keeps them exact.
 * Returns 0 or a negative errno with the reason in err. */
APB_API
int apb_learn_save(struct apb_learn *l, const char *path, char *err,
		   size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
