#!/usr/bin/env bash
# A bounded fuzz run of one target: bash fuzz/run.sh TARGET SECONDS|RUNS [libFuzzer flags…]
#   bash fuzz/run.sh parse 60s       # one minute
#   bash fuzz/run.sh parse 10000000  # ten million executions
# Builds the targets first (one `cargo fuzz build`) unless FUZZ_NO_BUILD=1. Exits non-zero
# on a crash, timeout (-timeout=10 s per input) or OOM (-rss_limit_mb=2048); the input that
# did it is written to fuzz/artifacts/TARGET/. Runs on stable Rust via RUSTC_BOOTSTRAP=1.
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: fuzz/run.sh TARGET SECONDS|RUNS [libFuzzer flags]}
budget=${2:?usage: fuzz/run.sh TARGET SECONDS|RUNS [libFuzzer flags]}
shift 2
case $budget in
  *s) limit=(-max_total_time="${budget%s}") ;;
  *) limit=(-runs="$budget") ;;
esac
# Mail and PGP inputs get room for real messages; the small parsers need less.
case $target in
  parse | pgpmime | decrypt | text | matrix_html | appservice_txn) max_len=65536 ;;
  *) max_len=8192 ;;
esac
if [[ ${FUZZ_NO_BUILD:-} != 1 ]]; then
  (cd "$fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir . "$target")
fi
[[ -d $fuzz/corpus/$target ]] || bash "$fuzz/seed.sh" >/dev/null
mkdir -p "$fuzz/artifacts/$target"
exec "$fuzz/target/x86_64-unknown-linux-gnu/release/$target" \
  -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$fuzz/artifacts/$target/" "${limit[@]}" "$@" "$fuzz/corpus/$target"
