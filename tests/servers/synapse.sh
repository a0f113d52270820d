#!/usr/bin/env bash
# Installs/starts/stops a loopback Synapse test homeserver: synapse.sh install | start DIR PORT | stop DIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
VENV=${COI_TEST_SYNAPSE_VENV:-$REPO/target/synapse-venv}
PY=$VENV/bin/python

SERVER_NAME=localhost
SHARED_SECRET=coi-test-shared-secret
AS_TOKEN=coi-as-token
HS_TOKEN=coi-hs-token

die() { echo "synapse.sh: $*" >&2; exit 1; }

# synapse_ok : true if the venv can import Synapse's homeserver (i.e. its dependencies are complete).
synapse_ok() {
    [[ -x "$PY" ]] && "$PY" -c 'import synapse.app.homeserver' >/dev/null 2>&1
}

do_install() {
    synapse_ok && return 0
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (apt-get install python3-venv?)"
    "$VENV/bin/pip" install -q --disable-pip-version-check matrix-synapse \
        || die "pip install matrix-synapse into $VENV failed"
    synapse_ok || die "matrix-synapse installed into $VENV but 'import synapse.app.homeserver' fails"
}

# proc_state PID : prints the state letter of PID (fails if PID does not exist).
proc_state() {
    local stat st
    read -r stat 2>/dev/null < "/proc/$1/stat" || return 1
    stat=${stat##*) }           # the fields after the ")" closing the command name
    read -r st _ <<<"$stat"
    echo "$st"
}

# pid_alive PID : true while PID exists and is not a zombie (this container's init reaps orphans late).
pid_alive() {
    local st
    st=$(proc_state "$1") || return 1
    [[ "$st" != Z ]]
}

# running_pid : prints the PID in $DIR/synapse.pid if that process is alive.
running_pid() {
    local pid
    [[ -r "$DIR/synapse.pid" ]] || return 1
    pid=$(tr -dc '0-9' < "$DIR/synapse.pid")
    [[ -n "$pid" ]] && pid_alive "$pid" && echo "$pid"
}

# port_open PORT : true if 127.0.0.1:PORT accepts a TCP connection.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# versions_ok : true if GET /_matrix/client/versions answers 200 (plain bash, no curl needed).
versions_ok() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
        printf 'GET /_matrix/client/versions HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$PORT" >&3
        read -r -t 2 line <&3 || exit 1
        [[ "$line" == "HTTP/1."[01]" 200"* ]]
    ) 2>/dev/null
}

log_tails() {
    local f
    for f in "$DIR/stdout.log" "$DIR/homeserver.log"; do
        [[ -s "$f" ]] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }
    done
    return 0
}

fail_start() {
    echo "synapse.sh: $*" >&2
    log_tails
    do_stop
    exit 1
}

do_stop() {
    local pid i
    if pid=$(running_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 200; i++)); do
            pid_alive "$pid" || break
            sleep 0.05
        done
        if pid_alive "$pid"; then
            echo "synapse.sh: Synapse (PID $pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                pid_alive "$pid" || break
                sleep 0.05
            done
            pid_alive "$pid" && echo "synapse.sh: Synapse (PID $pid) still alive after SIGKILL" >&2
        fi
    fi
    rm -f "$DIR/synapse.pid"
}

# write_config : homeserver.yaml, log.yaml and the appservice registration for $DIR/$PORT/$AS_PORT.
write_config() {
    local macaroon form
    macaroon=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    form=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    local rc='{per_second: 1000, burst_count: 1000}'

    cat > "$DIR/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $DIR/homeserver.log
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
EOF

    cat > "$DIR/appservice-coi.yaml" <<EOF
id: coi-bridge
url: http://127.0.0.1:$AS_PORT
as_token: $AS_TOKEN
hs_token: $HS_TOKEN
sender_localpart: coibot
rate_limited: false
receive_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: '@coi_.*:localhost'
  aliases:
    - exclusive: true
      regex: '#coi_.*:localhost'
  rooms: []
EOF

    cat > "$DIR/homeserver.yaml" <<EOF
# Synapse for coi-bridge integration tests (written by tests/servers/synapse.sh). Loopback only.
server_name: $SERVER_NAME
public_baseurl: http://127.0.0.1:$PORT/
report_stats: false
pid_file: $DIR/homeserver.pid
signing_key_path: $DIR/signing.key
media_store_path: $DIR/media_store
log_config: $DIR/log.yaml
listeners:
  - port: $PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: $DIR/homeserver.db
registration_shared_secret: $SHARED_SECRET
macaroon_secret_key: $macaroon
form_secret: $form
enable_registration: true
enable_registration_without_verification: true
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
url_preview_enabled: false
max_upload_size: 50M
app_service_config_files:
  - $DIR/appservice-coi.yaml
rc_message: $rc
rc_registration: $rc
rc_joins_per_room: $rc
rc_admin_redaction: $rc
rc_3pid_validation: $rc
rc_media_create: $rc
rc_room_creation: $rc
rc_login:
  address: $rc
  account: $rc
  failed_attempts: $rc
rc_joins:
  local: $rc
  remote: $rc
rc_invites:
  per_room: $rc
  per_user: $rc
  per_issuer: $rc
rc_presence:
  per_user: $rc
EOF
    echo "$PORT" > "$DIR/port"
    echo "$AS_PORT" > "$DIR/as_port"
}

cmd=${1:-}
case "$cmd" in
install)
    [[ $# -eq 1 ]] || die "usage: synapse.sh install"
    do_install
    ;;
start)
    [[ $# -eq 3 ]] || die "usage: synapse.sh start DIR PORT"
    DIR=$2 PORT=$3
    [[ "$PORT" =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT <= 65535)) || die "PORT must be a port number, got '$PORT'"
    [[ "$PORT" -ne 2024 ]] || die "port 2024 is taken by this machine's init; pick another PORT"
    # Only the interpreter is checked here (the import check costs 1.4 s); a broken install
    # makes Synapse exit at once, and fail_start shows the traceback from stdout.log.
    [[ -x "$PY" ]] || die "Synapse is not installed in $VENV (run: synapse.sh install)"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    [[ "$DIR" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "DIR '$DIR' has characters the configs cannot take (use e.g. mktemp -d)"

    if [[ -f "$DIR/homeserver.yaml" ]]; then
        # Reuse the existing config and database (restart after stop).
        [[ "$(cat "$DIR/port" 2>/dev/null)" == "$PORT" ]] \
            || die "$DIR was configured for PORT $(cat "$DIR/port" 2>/dev/null || echo '?'), not $PORT"
        AS_PORT=$(cat "$DIR/as_port" 2>/dev/null) || die "$DIR/as_port is missing"
    else
        AS_PORT=${COI_TEST_AS_PORT:-29331}
        [[ "$AS_PORT" =~ ^[0-9]+$ ]] || die "COI_TEST_AS_PORT must be a number, got '$AS_PORT'"
        write_config
    fi

    if ! running_pid >/dev/null; then
        rm -f "$DIR/synapse.pid"
        ! port_open "$PORT" || die "127.0.0.1:$PORT is already in use (another Synapse?)"
        # Synapse stays in the foreground of this background job; stdio must not hold the caller's stdout.
        "$PY" -m synapse.app.homeserver -c "$DIR/homeserver.yaml" </dev/null >>"$DIR/stdout.log" 2>&1 &
        echo $! > "$DIR/synapse.pid"
    fi
    pid=$(cat "$DIR/synapse.pid")

    for ((i = 0; ; i++)); do
        versions_ok && break
        pid_alive "$pid" || fail_start "Synapse (PID $pid) exited during startup"
        ((i < 300)) || fail_start "http://127.0.0.1:$PORT/_matrix/client/versions did not answer within 60 s"
        sleep 0.2
    done

    cat > "$DIR/env" <<EOF
export COI_TEST_MATRIX=http://127.0.0.1:$PORT
export COI_TEST_MATRIX_SERVER_NAME=$SERVER_NAME
export COI_TEST_AS_TOKEN=$AS_TOKEN
export COI_TEST_HS_TOKEN=$HS_TOKEN
export COI_TEST_AS_URL=http://127.0.0.1:$AS_PORT
export COI_TEST_SYNAPSE_SECRET=$SHARED_SECRET
export COI_TEST_SYNAPSE_DIR=$DIR
EOF
    echo "$DIR/env"
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: synapse.sh stop DIR"
    DIR=$2
    [[ -d "$DIR" ]] || exit 0
    do_stop
    ;;
*)
    die "usage: synapse.sh install | synapse.sh start DIR PORT | synapse.sh stop DIR"
    ;;
esac
