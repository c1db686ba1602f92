/*
 * lock.h - a mutex that knows which thread holds it, so that a function
 * documented as "mu held" can say so with apb_assert_held() and a caller
 * that forgot the lock fails the assert in a debug build (asserts are on
 * in every build meson makes here: debugoptimized keeps them) instead of
 * racing silently.
 *
 * The owner is written just after the lock is taken and cleared just
 * before it is released, by the holder only; any thread may read it, but
 * only the holder's own read can see its own id there, so a relaxed
 * atomic suffices and the check costs a load and a compare. Waiting on a
 * condition variable releases the lock inside pthread_cond_wait(), so the
 * owner is cleared around it (apb_cond_wait()).
 *
 * Internal to the library and the daemon; not installed.
 */
#ifndef APB_CORE_LOCK_H
#define APB_CORE_LOCK_H

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

/* glibc's pthread_t is an unsigned long; the owner is stored as one. */
_Static_assert(sizeof(pthread_t) <= sizeof(unsigned long),
	       "pthread_t must fit the owner field");

struct apb_mutex {
	pthread_mutex_t mu;
	atomic_ulong owner; /* (unsigned long)pthread_self() of the holder, 0 when free */
};

static inline int apb_mutex_init(struct apb_mutex *m)
{
	atomic_init(&m->owner, 0);
	return pthread_mutex_init(&m->mu, NULL) == 0 ? 0 : -ENOMEM;
}

static inline void apb_mutex_destroy(struct apb_mutex *m)
{
	assert(atomic_load_explicit(&m->owner, memory_order_relaxed) == 0);
	pthread_mutex_destroy(&m->mu);
}

static inline void apb_mutex_lock(struct apb_mutex *m)
{
	pthread_mutex_lock(&m->mu);
	atomic_store_explicit(&m->owner, (unsigned long)pthread_self(),
			      memory_order_relaxed);
}

static inline void apb_mutex_unlock(struct apb_mutex *m)
{
	atomic_store_explicit(&m->owner, 0, memory_order_relaxed);
	pthread_mutex_unlock(&m->mu);
}

/* Does the calling thread hold m? For asserts. */
static inline bool apb_mutex_held(struct apb_mutex *m)
{
	return atomic_load_explicit(&m->owner, memory_order_relaxed) ==
	       (unsigned long)pthread_self();
}

#define apb_assert_held(m) assert(apb_mutex_held(m))

static inline void apb_cond_wait(pthread_cond_t *cv, struct apb_mutex *m)
{
	apb_assert_held(m);
	atomic_store_explicit(&m->owner, 0, memory_order_relaxed);
	pthread_cond_wait(cv, &m->mu);
	atomic_store_explicit(&m->owner, (unsigned long)pthread_self(),
			      memory_order_relaxed);
}

#endif
