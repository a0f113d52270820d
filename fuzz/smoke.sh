#!/usr/bin/env bash
# CI smoke: one `cargo fuzz build` of every target, then each target for a bounded number
# of runs on its seed corpus. Fails on the first crash, timeout or OOM.
# FUZZ_SMOKE_RUNS overrides the runs per target (default 2000).
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
(cd "$fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir .)
bash "$fuzz/seed.sh"
for t in parse text matrix_html decrypt pgpmime autocrypt invite_link vcard appservice_txn telegram_update; do
  echo "== fuzz smoke: $t"
  log=$fuzz/artifacts/$t.smoke.log
  mkdir -p "$fuzz/artifacts"
  if ! FUZZ_NO_BUILD=1 bash "$fuzz/run.sh" "$t" "${FUZZ_SMOKE_RUNS:-2000}" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done' "$log" || true
done
