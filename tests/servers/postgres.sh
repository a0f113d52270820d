#!/usr/bin/env bash
# A private PostgreSQL cluster on loopback, without systemd: postgres.sh init DIR | start DIR PORT | stop DIR | bindir
#
# init   makes the cluster DIR/data (initdb, trust auth on loopback, superuser `coi`); starts nothing.
# start  inits if needed, starts the server on 127.0.0.1:PORT (socket in DIR/run), waits until it
#        answers, writes DIR/env (COI_TEST_POSTGRES_URL) and prints its path.
# stop   stops the server by the PID in DIR/data/postmaster.pid (fast shutdown; SIGKILL after 10 s).
# bindir prints the newest installed PostgreSQL's bin directory.
# Root cannot run PostgreSQL: as root the cluster is owned by, and the server runs as, the
# `postgres` user Debian's package creates (DIR must be traversable by it: mktemp -d is).
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

# The newest /usr/lib/postgresql/<ver>/bin holding a server (Debian's layout).
bindir() {
    local d best='' v bestv=0
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/postgres" && -x "$d/initdb" ]] || continue
        v=$(basename "$(dirname "$d")")
        [[ "$v" =~ ^[0-9]+$ ]] || continue
        if ((v > bestv)); then bestv=$v best=$d; fi
    done
    [[ -n "$best" ]] || die "no PostgreSQL server under /usr/lib/postgresql: run 'bash tests/servers/install.sh'"
    echo "$best"
}

# as_pg CMD... : execs CMD as the cluster's owner (the postgres user when we are root; setpriv
# execs in place, so a server started through it has no wrapper process above it).
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        exec "$@"
    fi
}

do_init() {
    local bin
    bin=$(bindir)
    [[ -f "$DIR/data/PG_VERSION" ]] && return 0
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/data"
    chmod 755 "$DIR"
    chmod 700 "$DIR/data"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user (Debian's postgresql package creates it)"
        chown postgres:postgres "$DIR/run" "$DIR/log" "$DIR/data"
    fi
    # --no-sync: a test cluster need not survive a power cut; it saves seconds on a busy disk.
    (as_pg "$bin/initdb" -D "$DIR/data" --auth=trust -U coi -E UTF8 --locale=C --no-sync \
        >"$DIR/log/initdb.log" 2>&1) || { tail -n 20 "$DIR/log/initdb.log" >&2; die "initdb failed"; }
}

# pid_alive PID : true while PID exists and is not a zombie.
pid_alive() {
    local stat
    read -r stat 2>/dev/null < "/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ "${stat%% *}" != Z ]]
}

server_pid() {
    local pid
    [[ -r "$DIR/data/postmaster.pid" ]] || return 1
    pid=$(head -n 1 "$DIR/data/postmaster.pid" | tr -dc '0-9')
    [[ -n "$pid" ]] && pid_alive "$pid" && echo "$pid"
}

do_stop() {
    local pid i
    pid=$(server_pid) || return 0
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.05
    done
    echo "postgres.sh: server (PID $pid) still running 10 s after SIGINT, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

cmd=${1:-}
case "$cmd" in
bindir)
    bindir
    ;;
init)
    [[ $# -eq 2 ]] || die "usage: postgres.sh init DIR"
    DIR=$2
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    do_init
    ;;
start)
    [[ $# -eq 3 ]] || die "usage: postgres.sh start DIR PORT"
    DIR=$2 PORT=$3
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    do_init
    BIN=$(bindir)
    if ! server_pid >/dev/null; then
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "127.0.0.1:$PORT is already in use"
        # setsid + redirected stdio: the server outlives this script and holds no caller's stdout.
        (as_pg setsid "$BIN/postgres" -D "$DIR/data" -k "$DIR/run" -h 127.0.0.1 -p "$PORT" -c fsync=off \
            </dev/null >>"$DIR/log/postgres.log" 2>&1) &
    fi
    for ((i = 0; ; i++)); do
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U coi -d postgres && break
        ((i < 200)) || { tail -n 20 "$DIR/log/postgres.log" >&2; do_stop; die "server not ready after 20 s"; }
        sleep 0.1
    done
    echo "export COI_TEST_POSTGRES_URL=postgres://coi@127.0.0.1:$PORT/postgres" > "$DIR/env"
    echo "$DIR/env"
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: postgres.sh stop DIR"
    DIR=$2
    [[ -d "$DIR" ]] || exit 0
    do_stop
    ;;
*)
    die "usage: postgres.sh init DIR | start DIR PORT | stop DIR | bindir"
    ;;
esac
