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

# install_missing PKG...: the packages not installed yet, after an update
# of the package lists (a fresh machine has none).
install_missing() {
    local p missing=()
    for p in "$@"; do
        installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "all $# packages present"
        return
    fi
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# install_clang_runtime: clang's sanitizer and libFuzzer runtimes and its
# symbolizer (readable stacks in reports), which come in packages named by
# clang's version, only recommended by clang; sets CLANG_MAJOR.
install_clang_runtime() {
    CLANG_MAJOR=$(clang -dumpversion | cut -d. -f1)
    install_missing "libclang-rt-$CLANG_MAJOR-dev" "llvm-$CLANG_MAJOR"
}
