/* test.h - the few macros the C unit tests share. A failed CHECK prints
 * file:line, the expression and exits 1, so meson test reports it. */
#ifndef APB_TEST_H
#define APB_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                        \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n",       \
				__FILE__, __LINE__, #cond);                \
			exit(1);                                           \
		}                                                          \
	} while (0)

#define CHECK_EQ(a, b)                                                     \
	do {                                                               \
		long long a_ = (long long)(a), b_ = (long long)(b);        \
		if (a_ != b_) {                                            \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
				__FILE__, __LINE__, #a, a_, #b, b_);       \
			exit(1);                                           \
		}                                                          \
	} while (0)

#define CHECK_STR_CONTAINS(hay, needle)                                    \
	do {                                                               \
		if (!strstr((hay), (needle))) {                            \
			fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", \
				__FILE__, __LINE__, (hay), (needle));      \
			exit(1);                                           \
		}                                                          \
	} while (0)

#define RUN(test)                                                          \
	do {                                                               \
		test();                                                    \
		printf("ok %s\n", #test);                                  \
	} while (0)

#endif
