#!/usr/bin/env bash
# The one-command local demo, for newcomers with no accounts anywhere: installs (if
# missing) and starts Dovecot + Postfix + Synapse on 127.0.0.1, runs coi-bridge on an
# embedded SQLite store with a bridged demo room, and prints the Matrix login and the
# Delta Chat invite link. Ctrl-C stops everything it started.
#
# Needs root on a Debian machine with Rust (like `bash tests/run`).
# COI_DEMO_PREBUILT=1 skips the build (the test suite runs this script after building).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COI_INSTALL_SKIP_LINT=1 bash tests/servers/install.sh
if [[ -z "${COI_DEMO_PREBUILT:-}" ]]; then
    cargo build --bin coi-bridge --example demo
fi
exec target/debug/examples/demo
