#!/usr/bin/python3
"""The shared library exports exactly the public API, and nothing else.

    check_exports.py LIBAPBUNDLE.so INCLUDE_DIR CXX_TEST_SOURCE

Parses every header in INCLUDE_DIR (include/apbundle/) for the functions and
objects it declares at file scope, outside `static inline` definitions, and
checks that
  - each such declaration carries APB_API (api.h) on the line before it,
  - `nm -D --defined-only` of the library lists exactly those names,
  - each header has an extern "C" guard and is included by the C++ test
    (tests/abi/cxx_headers.cpp), so that it is checked to compile as C++.
Each failure names the symbol and the header and says what to do.
"""
import re
import subprocess
import sys
from pathlib import Path


def strip_comments(text):
    """Blank out comments and string literals, keeping line numbers."""
    def blank(m):
        return re.sub(r'[^\n]', ' ', m.group(0))
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"', blank, text,
                  flags=re.S)


def strip_preprocessor(text):
    out = []
    cont = False
    for line in text.split('\n'):
        directive = cont or line.lstrip().startswith('#')
        cont = directive and line.rstrip().endswith('\\')
        out.append('' if directive else line)
    return '\n'.join(out)


def declarations(path):
    """(name, line, marked) for each function or object declared at file
    scope. A declaration is the text between two top-level ';' (or a
    top-level '}' closing a function body); its name is the identifier
    before the first top-level '(' (a function) or, for an object, the
    last identifier before any '[' or '='."""
    raw = path.read_text()
    # The extern "C" { and } lines, each inside #ifdef __cplusplus.
    raw = re.sub(r'#ifdef __cplusplus\n.*?#endif',
                 lambda m: '\n' * m.group(0).count('\n'), raw, flags=re.S)
    text = strip_preprocessor(strip_comments(raw))
    decls = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == '{':
            depth += 1
        elif c == '}':
            depth -= 1
            if depth == 0:
                stmt = text[start:i + 1]
                # A function body ends its statement; struct and enum
                # definitions end at their ';'.
                if re.search(r'\)\s*\{', stmt) and \
                        not re.match(r'\s*(typedef\s+)?(struct|enum|union)\b',
                                     stmt):
                    decls.append((start, stmt, True))
                    start = i + 1
        elif c == ';' and depth == 0:
            decls.append((start, text[start:i + 1], False))
            start = i + 1
        i += 1

    found = []
    for pos, stmt, has_body in decls:
        body = stmt
        if has_body:
            continue  # static inline definitions: compiled into the caller
        s = body.strip()
        if not s or re.match(r'(typedef|static)\b', s):
            continue
        # struct/enum/union definitions and forward declarations
        if re.match(r'(struct|enum|union)\s+\w+\s*(\{|;)', s):
            continue
        m = re.search(r'\b(\w+)\s*\(', s)
        if m and not re.search(r'\(\s*\*', s[:m.end() + 1]):
            name = m.group(1)
        else:
            flat = re.split(r'[\[=;]', s)[0]
            ids = re.findall(r'\b\w+\b', flat)
            if not ids:
                continue
            name = ids[-1]
        if name == 'APB_API':
            continue
        marked = s.startswith('APB_API')
        # line of the name itself
        off = pos + body.find(name)
        line = text.count('\n', 0, off) + 1
        found.append((name, line, marked))
    return found


def exported(lib):
    out = subprocess.run(['nm', '-D', '--defined-only', str(lib)],
                         check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            names.add(parts[2].split('@')[0])
    return names


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    lib, incdir, cxx = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    failures = []
    public = {}
    headers = sorted(incdir.glob('*.h'))
    if not headers:
        print(f'FAIL: no headers in {incdir}', file=sys.stderr)
        return 1
    cxx_text = cxx.read_text()
    for h in headers:
        rel = f'{incdir.name}/{h.name}'
        text = h.read_text()
        if h.name != 'api.h':
            if 'extern "C"' not in text:
                failures.append(
                    f'{rel}: no extern "C" guard; wrap its declarations in '
                    '#ifdef __cplusplus / extern "C" { / #endif like the '
                    'other headers')
            if '#include "api.h"' not in text:
                failures.append(f'{rel}: does not #include "api.h"')
        if f'<apbundle/{h.name}>' not in cxx_text:
            failures.append(
                f'{rel}: not included by {cxx.name}; add '
                f'#include <apbundle/{h.name}> there so that it is checked '
                'to compile as C++')
        for name, line, marked in declarations(h):
            public[name] = f'{rel}:{line}'
            if not marked:
                failures.append(
                    f'{rel}:{line}: {name} is declared in a public header '
                    'without APB_API, so libapbundle.so does not export it: '
                    'put APB_API on the line before its declaration '
                    '(include/apbundle/api.h), or move the declaration to '
                    "an internal header in core/ if it is not public API")
    syms = exported(lib)
    for name in sorted(syms - set(public)):
        failures.append(
            f'{lib.name} exports {name}, which no header of '
            f'{incdir} declares: internal symbols must stay hidden '
            '(no APB_API or visibility("default") on them, no '
            '-fvisibility=default in core/meson.build); if it is meant to '
            'be public, declare it there with APB_API')
    for name in sorted(set(public) - syms):
        if any(f.startswith(f'{public[name]}: {name} is declared') or
               f'{name} is declared' in f for f in failures):
            continue
        failures.append(
            f'{public[name]}: {name} is declared with APB_API but '
            f'{lib.name} does not export it: define it in core/, or remove '
            'the declaration')
    for f in failures:
        print('FAIL: ' + f)
    if failures:
        return 1
    print(f'ok: {lib.name} exports exactly the {len(public)} functions and '
          f'objects declared in {len(headers)} headers of {incdir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
