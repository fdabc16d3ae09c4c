#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS_PER_TARGET seconds (default 60) on its
# committed corpus, then prints per target the executions, speed and coverage. Exits non-zero if
# any target crashed (panic, broken invariant, timeout, out of memory).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# The committed corpus (fuzz/corpus/<target>) is only read: new inputs go to a temporary
# directory that is deleted afterwards (keep it with FUZZ_KEEP_CORPUS=DIR). Crash inputs go to
# fuzz/artifacts/<target>/ (gitignored). Environment: FUZZ_JOBS (cargo build jobs, default 2),
# FUZZ_ARGS (extra libFuzzer arguments, e.g. "-jobs=4 -workers=4").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
secs="${1:-60}"
shift || true
all=(ecam hdm mailbox window topology regions elf emulate)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
jobs="${FUZZ_JOBS:-2}"
export CARGO_TARGET_DIR="$here/target"
export CARGO_BUILD_JOBS="$jobs"
# cargo-fuzz passes nightly-only flags; the project's stable toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    CARGO_TARGET_DIR="$here/target/install" cargo install cargo-fuzz --locked -j "$jobs"
fi

echo "== building fuzz targets"
# -O with -a: optimised, but with debug assertions and overflow checks. No sanitizer: the crates
# under test forbid unsafe code (stitch/kvm are not linked), so ASan would mostly cost speed.
(cd "$root" && cargo fuzz build -O -a --sanitizer none --target-dir "$CARGO_TARGET_DIR")

triple="$(rustc -vV | sed -n 's/^host: //p')"
bin="$CARGO_TARGET_DIR/$triple/release"
work="$(mktemp -d "${TMPDIR:-/tmp}/cxlvm-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "no such target: $t" >&2; exit 2; }
    mkdir -p "$work/$t" "$here/artifacts/$t"
    args=(
        -max_total_time="$secs"
        -print_final_stats=1
        -timeout=60
        -rss_limit_mb=4096
        -artifact_prefix="$here/artifacts/$t/"
    )
    [ -f "$here/dicts/$t.dict" ] && args+=(-dict="$here/dicts/$t.dict")
    case "$t" in
        # Slow, stateful targets (tens of execs/s): op sequences need length from the start,
        # libFuzzer's default length ramp would keep them at a few ops for minutes.
        ecam | hdm | window) args+=(-max_len=1024 -len_control=0) ;;
        regions) args+=(-max_len=256 -len_control=0) ;;
        mailbox) args+=(-max_len=4096) ;;
    esac
    # shellcheck disable=SC2206
    args+=(${FUZZ_ARGS:-})
    echo "== $t: ${secs}s"
    log="$work/$t.log"
    set +e
    "$bin/$t" "${args[@]}" "$work/$t" "$here/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' "$log" | tail -1 || true)"
    line="$(printf '%-9s execs %-10s exec/s %-7s %s' "$t" "${execs:-?}" "${speed:-?}" "${cov:-cov: ?}")"
    if [ "$rc" -ne 0 ]; then
        line="$line  CRASHED (exit $rc)"
        failed+=("$t")
        echo "---- $t: last lines of the libFuzzer log"
        tail -n 60 "$log"
        echo "---- artifacts:"
        ls -1 "$here/artifacts/$t/" || true
    fi
    echo "$line"
    summary+=("$line")
    if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
        mkdir -p "$FUZZ_KEEP_CORPUS/$t"
        cp -n "$work/$t"/* "$FUZZ_KEEP_CORPUS/$t/" 2>/dev/null || true
    fi
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
