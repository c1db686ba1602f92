#!/usr/bin/env bash
# scripts/test.sh - install what is missing, then run every test stage CI
# runs (.ci/run calls exactly this). Idempotent; runs as root,
# non-interactively, on a fresh Debian 12 (also from a fresh clone).
#
#   bash scripts/test.sh [PYTEST ARGS...]     e.g. -k stats, -x
#
# Stages, in order (each in its own build dir, reused when present):
#   normal  build (-Dwerror=true), meson test, the whole e2e suite
#   deb     the Debian packages: dpkg-buildpackage -us -uc -b in a copy of
#           the tree, lintian (no errors), installed; the installed
#           programs, man pages, a C and a C++ program built with
#           pkg-config, a mount; then removed (~1.5 min)
#   asan    AddressSanitizer + UBSan build: meson test and the e2e suite
#           again, minus the `perf` tests (RSS, timing-dependent hit rates)
#   tsan    ThreadSanitizer build: meson test and TSAN_TESTS (default
#           tests/e2e/test_stress.py; tests/e2e for all, ~2 min more)
#   fuzz    scripts/fuzz.sh FUZZ_SECONDS
#   bench   QUICK=1 scripts/bench-remote.py (~35 s: a 16 MiB bundle from
#           nginx over the shaped and the plain loopback link, through
#           apbundlefs, curl and rclone mount, bytes compared; no RGW),
#           which must leave no mount or run directory behind; then
#           QUICK=1 SMOKE=1 scripts/bench: every benchmark system and case at
#           tiny sizes, the bytes read compared with the source (~30 s; a
#           check that the benchmark still runs, not numbers); then again
#           with the data on a read-limited RAM disk (DISK=ram
#           DISK_MBPS=2000), which must be gone afterwards; then QUICK=1
#           scripts/bench-llama.py (~15 s: llama.cpp on a 99 MiB model, native
#           and mounted, the same tokens), whose cgroups, mounts and RAM disk
#           must be gone afterwards; QUICK=1 scripts/lifecycle on numpy,
#           llama and tesseract (~40-65 s: every mode, reclaim and the leak
#           cycles; the outputs through the mount equal to the local ones),
#           which must leave no cgroup, mount or RAM disk either
#   remote  the e2e read checks (REMOTE_TESTS: bytes, budget, stats,
#           prefetch, pinning, integrity) again with every bundle served by
#           nginx (APB_E2E_SOURCE=nginx), then by a Ceph RGW (=rgw) and
#           mounted by URL; tests marked local_only skip; then once more
#           from nginx through the disk tier (APB_E2E_CACHE_DIR=1)
# A sanitizer report anywhere (unit test, daemon, CLI) fails its stage.
# PYTEST ARGS go to the e2e runs of normal and asan only.
#
# Environment: STAGES (default "normal deb asan tsan fuzz bench remote"; e.g.
# STAGES=normal for a quick loop), BUILD_DIR (build), ASAN_BUILD_DIR
# (build-asan), TSAN_BUILD_DIR (build-tsan), TSAN_TESTS, REMOTE_TESTS,
# PYTEST_TIMEOUT (seconds per e2e run, 540), FUZZ_SECONDS (60).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

STAGES=${STAGES:-normal deb asan tsan fuzz bench remote}
BUILD_DIR=${BUILD_DIR:-build}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
TSAN_BUILD_DIR=${TSAN_BUILD_DIR:-build-tsan}
TSAN_TESTS=${TSAN_TESTS:-tests/e2e/test_stress.py}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
REMOTE_TESTS=${REMOTE_TESTS:-tests/e2e/test_read.py tests/e2e/test_v2_read.py
    tests/e2e/test_readahead.py tests/e2e/test_budget.py tests/e2e/test_eviction.py
    tests/e2e/test_v2_memory.py tests/e2e/test_stats.py tests/e2e/test_prefetch.py
    tests/e2e/test_models.py tests/e2e/test_faults.py tests/e2e/test_stress.py
    tests/e2e/test_load_order.py}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-540}
PYTHON=/usr/bin/python3          # the Debian interpreter that sees python3-* packages

PACKAGES=(meson ninja-build pkg-config gcc g++ clang libfuse3-dev fuse3 libcjson-dev
          libxxhash-dev libzstd-dev libcurl4-openssl-dev libmicrohttpd-dev python3 python3-pytest python3-psutil
          python3-numpy python3-pil fonts-dejavu-core tesseract-ocr
          tesseract-ocr-eng tesseract-ocr-osd squashfuse squashfs-tools fio python3-matplotlib)

step() { printf '\n==> %s\n' "$*"; }

for stage in $STAGES; do
    case "$stage" in
    normal|deb|asan|tsan|fuzz|bench|remote) ;;
    *) echo "error: unknown stage '$stage' in STAGES (normal deb asan tsan fuzz bench remote)" >&2
       exit 2 ;;
    esac
done

step "dependencies"
install_missing "${PACKAGES[@]}"
install_clang_runtime   # the asan stage's runtime and symbolizer
install_promtool        # promtool for tests/e2e/test_metrics.py
install_servers         # nginx and Ceph RGW for the remote-source e2e tests
install_llama ||        # node-llama-cpp for tests/e2e/test_llama.py
    echo "warning: node-llama-cpp did not install; tests/e2e/test_llama.py will skip" >&2
install_onnx ||         # onnxruntime-node and ONNX models for tests/e2e/test_onnx.py
    echo "warning: onnxruntime-node did not install; tests/e2e/test_onnx.py will skip" >&2
install_torch           # PyTorch for tests/e2e/test_torch.py
if [ ! -e /dev/fuse ]; then
    echo "error: /dev/fuse is missing; the end-to-end tests need FUSE" >&2
    exit 1
fi

# A private temp root: whatever a killed run leaves there (mounts, daemons)
# is found and cleaned up below, and nothing else on the machine is touched.
E2E_TMP=$(mktemp -d /tmp/apbundlefs-e2e.XXXXXX)
cleanup() {
    # first daemons started on files below E2E_TMP (matched by that unique
    # path): killing a hung daemon also unblocks its mount
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        [ "$pid" != "$$" ] || continue
        if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -q "^[^ ]*apbundlefs .*$E2E_TMP"; then
            echo "cleanup: killing leftover daemon $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # then fuse mounts below E2E_TMP, deepest first; lazy unmount as a fallback
    local line left right mp
    while IFS= read -r line; do
        left=${line%% - *}; right=${line#* - }
        mp=$(cut -d' ' -f5 <<<"$left")
        case "${right%% *}" in fuse*) ;; *) continue ;; esac
        case "$mp" in "$E2E_TMP"/*) echo "$mp" ;; esac
    done </proc/self/mountinfo | sort -r | while read -r m; do
        echo "cleanup: unmounting leftover $m" >&2
        fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
    done
    rm -rf "$E2E_TMP" 2>/dev/null || true
}
trap cleanup EXIT

# configure CC DIR OPTION=VALUE...: set up DIR with compiler CC, or change
# only the options that differ (re-running `meson configure` with equal
# values would still make ninja regenerate). A dir set up with another
# compiler is set up afresh; DIR/apb-cc names it (none: the default, gcc).
configure() {
    local cc=$1 dir=$2; shift 2
    if [ -f "$dir/build.ninja" ] && [ "$(cat "$dir/apb-cc" 2>/dev/null || echo gcc)" != "$cc" ]; then
        echo "$dir was set up with another compiler than $cc: setting it up again"
        rm -f "$dir/build.ninja"
    fi
    if [ ! -f "$dir/build.ninja" ]; then
        rm -rf "$dir"
        # the C++ compiler of the same family (tests/abi/cxx_headers.cpp
        # links the sanitizer runtime of the C build)
        CC=$cc CXX=$([ "$cc" = clang ] && echo clang++ || echo g++) \
            meson setup "$dir" "${@/#/-D}" || return
        echo "$cc" >"$dir/apb-cc"
        return
    fi
    local differ a args=()
    differ=$(meson introspect --buildoptions "$dir" | "$PYTHON" -c '
import json, sys
have = {}
for o in json.load(sys.stdin):
    v = o["value"]
    if isinstance(v, bool):
        v = str(v).lower()
    elif isinstance(v, list):
        v = ",".join(v)
    have[o["name"]] = str(v)
print(" ".join(a for a in sys.argv[1:] if have.get(a.split("=", 1)[0]) != a.split("=", 1)[1]))
' "$@") || return
    for a in $differ; do args+=("-D$a"); done
    [ ${#args[@]} -eq 0 ] || meson configure "$dir" "${args[@]}" >/dev/null
}

# The stages run as `stage_X || ...`, where bash ignores `set -e`: every
# command that must stop a stage says so with `|| return`.

# e2e NAME BUILD_DIR PYTEST ARGS...: the e2e tests against one build.
e2e() {
    local name=$1 dir=$2 erc=0; shift 2
    APB_BUILD_DIR="$PWD/$dir" timeout -k 30 "$PYTEST_TIMEOUT" \
        "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider --basetemp="$E2E_TMP/$name" \
        "$@" || erc=$?
    if [ "$erc" -eq 124 ] || [ "$erc" -eq 137 ]; then
        echo "error: end-to-end tests ($name) did not finish within ${PYTEST_TIMEOUT}s" >&2
    fi
    return "$erc"
}

# Sanitizer reports go to files, one per process (log_path=DIR/KIND.PID), so
# that a report in a daemon the tests started in the background, or in one
# whose exit status no test checks, is still seen: a stage with any report
# file fails, and the reports are printed.
san_reports() {   # san_reports DIR: print the reports; status 1 if any
    local f found=1
    for f in "$1"/*; do
        [ -f "$f" ] || continue
        found=0
        echo "---- sanitizer report $f" >&2
        cat "$f" >&2
    done
    [ "$found" -eq 1 ]
}

stage_normal() {
    step "normal: configure ($BUILD_DIR, -Dwerror=true)"
    configure gcc "$BUILD_DIR" werror=true || return
    step "normal: build"
    ninja -C "$BUILD_DIR" || return
    local src=0
    step "normal: unit tests"
    meson test -C "$BUILD_DIR" --print-errorlogs || src=$?
    step "normal: end-to-end tests"
    e2e normal "$BUILD_DIR" tests/e2e "$@" || src=$?
    return "$src"
}

stage_asan() {
    local dir=$ASAN_BUILD_DIR logs=$E2E_TMP/asan-logs src=0 erc=0
    step "asan: configure ($dir, clang, address,undefined sanitizers, debug)"
    # clang, not gcc: gcc's libubsan beside libasan ignores log_path and
    # would print UBSan reports only to the daemon's stderr
    configure clang "$dir" werror=true buildtype=debug b_sanitize=address,undefined \
        b_lundef=false c_args=-fno-sanitize-recover=all || return
    step "asan: build"
    ninja -C "$dir" || return
    mkdir -p "$logs"
    local -x ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:print_stacktrace=1:log_path=$logs/asan"
    local -x ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-$CLANG_MAJOR/bin/llvm-symbolizer
    local -x UBSAN_OPTIONS="halt_on_error=1:abort_on_error=0:print_stacktrace=1:log_path=$logs/ubsan"
    step "asan: unit tests"
    meson test -C "$dir" --print-errorlogs || src=$?
    step "asan: end-to-end tests (perf tests deselected)"
    e2e asan "$dir" -m "not perf" tests/e2e "$@" || erc=$?
    [ "$erc" -ne 5 ] || erc=0   # PYTEST ARGS that select only perf tests
    [ "$erc" -eq 0 ] || src=$erc
    san_reports "$logs" || { echo "error: AddressSanitizer/UBSan reports above" >&2; src=1; }
    return "$src"
}

stage_tsan() {
    local dir=$TSAN_BUILD_DIR logs=$E2E_TMP/tsan-logs src=0
    step "tsan: configure ($dir, thread sanitizer, debug)"
    configure gcc "$dir" werror=true buildtype=debug b_sanitize=thread b_lundef=false || return
    step "tsan: build"
    ninja -C "$dir" || return
    mkdir -p "$logs"
    local -x TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$logs/tsan"
    step "tsan: unit tests"
    meson test -C "$dir" --print-errorlogs || src=$?
    step "tsan: end-to-end tests: $TSAN_TESTS (perf tests deselected)"
    e2e tsan "$dir" -m "not perf" $TSAN_TESTS || src=$?
    san_reports "$logs" || { echo "error: ThreadSanitizer reports above" >&2; src=1; }
    return "$src"
}

stage_fuzz() {
    step "fuzz: scripts/fuzz.sh $FUZZ_SECONDS"
    bash scripts/fuzz.sh "$FUZZ_SECONDS"
}

stage_bench() {
    step "bench: QUICK=1 scripts/bench-remote.py ($BUILD_DIR)"
    install_bench_remote || return
    QUICK=1 APB_BUILD=$BUILD_DIR $PYTHON scripts/bench-remote.py || return
    if grep -q apb-bench-remote-quick /proc/self/mountinfo ||
        [ -n "$(ls -A /var/tmp/apb-bench-remote-quick 2>/dev/null | grep -v -x -e data -e out)" ]; then
        echo "error: scripts/bench-remote.py left a mount or its run directory behind" >&2
        return 1
    fi
    step "bench: QUICK=1 SMOKE=1 scripts/bench ($BUILD_DIR)"
    QUICK=1 SMOKE=1 APB_BUILD=$BUILD_DIR $PYTHON scripts/bench || return
    step "bench: the same on a RAM disk (DISK=ram DISK_MBPS=2000)"
    QUICK=1 SMOKE=1 DISK=ram DISK_MBPS=2000 APB_BUILD=$BUILD_DIR $PYTHON scripts/bench ||
        return
    if grep -q apb-bench-smoke/ram /proc/self/mountinfo ||
        losetup -a | grep -q apb-bench-smoke/ram; then
        echo "error: the benchmark's RAM disk is still there:" >&2
        grep apb-bench-smoke/ram /proc/self/mountinfo >&2
        losetup -a >&2
        return 1
    fi
    step "bench: QUICK=1 PROGRAMS=numpy,llama,tesseract scripts/lifecycle ($BUILD_DIR)"
    QUICK=1 PROGRAMS=numpy,llama,tesseract APB_BUILD=$BUILD_DIR $PYTHON scripts/lifecycle ||
        return
    if ls -d /sys/fs/cgroup/memory/apb-lifecycle-quick /sys/fs/cgroup/apb-lifecycle-quick \
        2>/dev/null || grep -q apb-lifecycle-quick /proc/self/mountinfo ||
        losetup -a | grep -q apb-lifecycle-quick; then
        echo "error: scripts/lifecycle left a cgroup, mount or loop device behind" >&2
        return 1
    fi
    if [ ! -f scripts/llama/node_modules/node-llama-cpp/package.json ]; then
        echo "bench: node-llama-cpp is not installed; scripts/bench-llama.py skipped" >&2
        return
    fi
    step "bench: QUICK=1 scripts/bench-llama.py ($BUILD_DIR)"
    QUICK=1 APB_BUILD=$BUILD_DIR $PYTHON scripts/bench-llama.py || return
    if ls -d /sys/fs/cgroup/memory/apb-llama-* /sys/fs/cgroup/apb-llama-* 2>/dev/null ||
        grep -q apb-bench-llama /proc/self/mountinfo ||
        losetup -a | grep -q apb-bench-llama; then
        echo "error: scripts/bench-llama.py left a cgroup, mount or loop device behind" >&2
        return 1
    fi
}

# deb: the Debian packages (debian/) as a user gets them. Built in a copy of
# the tree (dpkg-buildpackage writes its .debs into the parent directory),
# installed, used, and removed again whatever happened.
stage_deb() {
    local t src=0 start=$SECONDS pkgs=(apbundlefs libapbundle0 libapbundle-dev)
    local -a lock=(-o DPkg::Lock::Timeout=300)
    step "deb: tools"
    install_missing debhelper dpkg-dev lintian man-db groff-base g++ pkg-config || return
    t=$(mktemp -d "$E2E_TMP/deb.XXXXXX") || return
    mkdir "$t/src"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -co --exclude-standard -z | tar --null -T - -c | tar -x -C "$t/src"
    else
        tar --exclude='./build*' --exclude='./obj-*' --exclude=./.git \
            --exclude='node_modules' -c . | tar -x -C "$t/src"
    fi || return
    step "deb: dpkg-buildpackage -us -uc -b (log: $t/build.log)"
    # nocheck: the normal stage runs meson test on the same sources
    if ! (cd "$t/src" && DEB_BUILD_OPTIONS="nocheck noddebs parallel=$(nproc)" \
            dpkg-buildpackage -us -uc -b) >"$t/build.log" 2>&1; then
        tail -n 60 "$t/build.log" >&2
        echo "error: dpkg-buildpackage failed (whole log: $t/build.log)" >&2
        return 1
    fi
    echo "built in $((SECONDS - start)) s: $(cd "$t" && echo *.deb)"
    step "deb: lintian"
    lintian --fail-on error "$t"/apbundlefs_*.changes || return
    echo "lintian done at $((SECONDS - start)) s"
    step "deb: install, use, remove"
    as_root apt-get install -y -qq --no-install-recommends "${lock[@]}" \
        "$t"/apbundlefs_*.deb "$t"/libapbundle0_*.deb "$t"/libapbundle-dev_*.deb || return
    deb_check "$t" || src=$?
    as_root apt-get purge -y -qq "${lock[@]}" "${pkgs[@]}" >/dev/null || src=1
    if dpkg-query -W -f='${Status}\n' "${pkgs[@]}" 2>/dev/null | grep -q ' installed$'; then
        echo "error: the packages are still installed" >&2
        src=1
    fi
    echo "deb stage: $((SECONDS - start)) s"
    return "$src"
}

# deb_check DIR: what the installed packages must give, in DIR.
deb_check() {
    local t=$1 repo=$PWD v out
    v=$(dpkg-parsechangelog -l debian/changelog -S Version) || return
    v=${v%%-*}   # the upstream part, what --version prints
    out=$(env -u LD_LIBRARY_PATH /usr/bin/apbundlefs --version) || return
    [[ $out == "apbundlefs $v "* ]] ||
        { echo "error: /usr/bin/apbundlefs --version says '$out', not $v" >&2; return 1; }
    out=$(env -u LD_LIBRARY_PATH /usr/bin/apbundle --version) || return
    [ "$out" = "apbundle $v" ] ||
        { echo "error: /usr/bin/apbundle --version says '$out', not $v" >&2; return 1; }
    [ "$(man -w apbundlefs)" = /usr/share/man/man8/apbundlefs.8.gz ] &&
        [ "$(man -w apbundle)" = /usr/share/man/man1/apbundle.1.gz ] ||
        { echo "error: man -w does not find apbundlefs(8) and apbundle(1)" >&2; return 1; }
    [ -f /usr/share/bash-completion/completions/apbundle ] ||
        { echo "error: no bash completion installed" >&2; return 1; }
    # A C and a C++ program, built with pkg-config against the installed
    # library (and only it: not this tree's include/).
    (cd "$t" && cc -std=c11 -Wall -Werror "$repo/tests/deb/read_model.c" \
        $(pkg-config --cflags --libs apbundle) -o read_model) || return
    (cd "$t" && g++ -std=c++11 -Wall -Werror "$repo/tests/abi/cxx_headers.cpp" \
        $(pkg-config --cflags --libs apbundle) -o cxx_headers) || return
    out=$(ldd "$t/read_model") || return
    [[ $out =~ libapbundle\.so\.0\ =\>\ (/usr)?/lib/[^/]+/libapbundle\.so\.0\  ]] ||
        { echo "error: read_model does not use the installed libapbundle.so.0: $out" >&2
          return 1; }
    env -u LD_LIBRARY_PATH "$t/cxx_headers" || return
    head -c 3000000 /dev/urandom >"$t/m.bin"
    env -u LD_LIBRARY_PATH /usr/bin/apbundle create "$t/b.apbundle" "m=$t/m.bin" >/dev/null || return
    env -u LD_LIBRARY_PATH "$t/read_model" "$t/b.apbundle" m "$t/m.bin" || return
    # The installed daemon mounts and serves the same bytes (it detaches
    # once the mount is up; the EXIT trap unmounts whatever is left).
    mkdir "$t/mnt"
    env -u LD_LIBRARY_PATH /usr/bin/apbundlefs -o max_memory=1M "$t/b.apbundle" "$t/mnt" || return
    local crc=0
    cmp "$t/mnt/m" "$t/m.bin" || crc=$?
    fusermount3 -u "$t/mnt" || crc=1
    [ "$crc" -eq 0 ] || return "$crc"
    # The fstab way (docs/USAGE.md, "Mounting at boot"): mount(8) through
    # mount.fuse3, which finds /usr/bin/apbundlefs on the PATH mount gives
    # it; ro is accepted and .control still takes a command.
    as_root mount -t fuse.apbundlefs -o ro,max_memory=1M "$t/b.apbundle" "$t/mnt" || return
    cmp "$t/mnt/m" "$t/m.bin" || crc=$?
    echo clear >"$t/mnt/.control" || crc=1
    as_root umount "$t/mnt" || crc=1
    [ "$crc" -eq 0 ] || { echo "error: mount -t fuse.apbundlefs of the installed package" >&2
                          return "$crc"; }
    # The systemd template unit, whose ExecStart and man page now exist.
    [ -f /lib/systemd/system/apbundlefs@.service ] ||
        { echo "error: no /lib/systemd/system/apbundlefs@.service" >&2; return 1; }
    if command -v systemd-analyze >/dev/null; then
        out=$(systemd-analyze verify /lib/systemd/system/apbundlefs@.service 2>&1) &&
            [ -z "$out" ] ||
            { echo "error: systemd-analyze verify apbundlefs@.service: $out" >&2; return 1; }
    fi
    echo "ok: the installed packages work (version $v)"
}

stage_remote() {
    local src=0 server
    step "remote: configure and build ($BUILD_DIR)"
    configure gcc "$BUILD_DIR" werror=true || return
    ninja -C "$BUILD_DIR" || return
    for server in nginx rgw; do
        step "remote: end-to-end read checks, bundles served by $server"
        APB_E2E_SOURCE=$server e2e "remote-$server" "$BUILD_DIR" $REMOTE_TESTS || src=$?
    done
    step "remote: the same read checks through the disk tier (cache_dir=), served by nginx"
    APB_E2E_SOURCE=nginx APB_E2E_CACHE_DIR=1 e2e "remote-nginx-tier" "$BUILD_DIR" $REMOTE_TESTS || src=$?
    return "$src"
}

rc=0
summary=()
for stage in $STAGES; do
    start=$SECONDS
    src=0
    "stage_$stage" "$@" || src=$?
    summary+=("$(printf '%-7s %-4s %4ds' "$stage" "$([ "$src" -eq 0 ] && echo ok || echo FAIL)" \
        $((SECONDS - start)))")
    [ "$src" -eq 0 ] || rc=$src
done
step "summary"
printf '%s\n' "${summary[@]}"
[ "$rc" -eq 0 ] && echo "all tests passed"
exit "$rc"
