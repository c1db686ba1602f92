/*
 * api.h - what marks a declaration as part of libapbundle's ABI.
 *
 * The library is built with every symbol hidden (meson's
 * gnu_symbol_visibility: 'hidden'); APB_API, on the line before a
 * declaration in a public header (include/apbundle/), exports that one
 * function or object from libapbundle.so. Everything else in core/ stays
 * internal: callable by the daemon, tools and unit tests, which link the
 * library's objects statically, and invisible to programs that link the
 * shared library.
 * tests/abi/check_exports.py compares the two lists on every build; the
 * soname policy is in README.md, "Library".
 */
#ifndef APBUNDLE_API_H
#define APBUNDLE_API_H

#if defined(__GNUC__) || defined(__clang__)
#define APB_API __attribute__((visibility("default")))
#else
#define APB_API
#endif

#endif
