#!/usr/bin/env bash
# test_completion.sh COMPLETION_FILE: source apbundle's bash completion in
# a plain bash (no bash-completion package needed) and call _apbundle with
# COMP_WORDS/COMP_CWORD as bash would, comparing COMPREPLY exactly.
set -u
export LC_ALL=C   # sort order of the expected lists
. "$1" || { echo "FAIL: cannot source $1"; exit 1; }
fails=0

# expect 'WANTED WORDS' WORD...: complete the last WORD of the command line
expect() {
    local want=$1; shift
    COMP_WORDS=("$@")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _apbundle
    local got
    got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')
    got=${got% }
    if [ "$got" != "$want" ]; then
        echo "FAIL: completing '$*|': got '$got', expected '$want'"
        fails=$((fails + 1))
    else
        echo "ok: '$*|' -> '$got'"
    fi
}

[ "$(complete -p apbundle 2>/dev/null)" = "complete -F _apbundle apbundle" ] ||
    { echo "FAIL: no 'complete -F _apbundle apbundle'"; fails=$((fails + 1)); }

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/sub"
: >"$tmp/a.apbundle"
: >"$tmp/b.txt"

expect "create extract help list stats verify" apbundle ""
expect "create" apbundle cr
expect "--help --version" apbundle --
expect "--block-size --compress --format --help --progress" apbundle create --
expect "--compress" apbundle create --comp
expect "zstd zstd:1 zstd:19 zstd:3 zstd:9" apbundle create --compress z
expect "1 2" apbundle create --format ""
expect "auto json none" apbundle create --progress ""
expect "--help --json --tsv" apbundle list --
expect "--count --help --top --watch" apbundle stats --
expect "$tmp/a.apbundle $tmp/sub" apbundle list "$tmp/"
expect "$tmp/a.apbundle $tmp/b.txt $tmp/sub" apbundle create out.apbundle "$tmp/"
expect "$tmp/a.apbundle $tmp/sub" apbundle extract "$tmp/"
expect "" apbundle extract x.apbundle ""
expect "--help --output -o" apbundle extract x.apbundle m -
expect "$tmp/sub" apbundle stats "$tmp/"
expect "verify" apbundle help v
expect "" apbundle help verify ""

if [ "$fails" -ne 0 ]; then
    echo "$fails completion case(s) failed"
    exit 1
fi
