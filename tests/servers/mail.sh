#!/usr/bin/env bash
# Starts/stops a loopback Dovecot + Postfix test instance: mail.sh start DIR BASE | mail.sh stop DIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
POSTFIX_MASTER=/usr/lib/postfix/sbin/master

die() { echo "mail.sh: $*" >&2; exit 1; }

# proc_stat PID : prints "STATE PPID PGRP" of PID (fails if PID does not exist).
proc_stat() {
    local stat st ppid pgrp
    read -r stat 2>/dev/null < "/proc/$1/stat" || return 1
    stat=${stat##*) }           # the fields after the ")" closing the command name
    read -r st ppid pgrp _ <<<"$stat"
    echo "$st $ppid $pgrp"
}

# pid_alive PID : true while PID exists and is not a zombie (this container's init reaps orphans late).
pid_alive() {
    local st
    st=$(proc_stat "$1") || return 1
    [[ "${st%% *}" != Z ]]
}

# group_alive PGRP : true while some non-zombie process is in process group PGRP.
group_alive() {
    local f stat rest st pgrp
    for f in /proc/[0-9]*/stat; do
        read -r stat 2>/dev/null < "$f" || continue
        rest=${stat##*) }
        read -r st _ pgrp _ <<<"$rest"
        [[ "$pgrp" == "$1" && "$st" != Z ]] && return 0
    done
    return 1
}

# pidfile_pid FILE : prints the PID in FILE if the file exists and that PID is alive.
pidfile_pid() {
    local pid
    [[ -r "$1" ]] || return 1
    pid=$(tr -dc '0-9' < "$1")
    [[ -n "$pid" ]] && pid_alive "$pid" && echo "$pid"
}

# stop_pidfile NAME FILE : SIGTERM the daemon in FILE - its whole process group when it leads one
# (both daemons do: then Dovecot's imap processes with IDLE clients exit at once instead of ~10 s
# after the master) - wait (<=5 s, then SIGKILL) until gone or zombie, remove FILE.
stop_pidfile() {
    local name=$1 file=$2 pid target i pgrp
    if pid=$(pidfile_pid "$file"); then
        pgrp=$(proc_stat "$pid" | cut -d' ' -f3) || pgrp=
        target=$pid
        [[ "$pgrp" == "$pid" ]] && target=-$pid
        kill -TERM -- "$target" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            pid_alive "$pid" || break
            sleep 0.05
        done
        if pid_alive "$pid"; then
            echo "mail.sh: $name (PID $pid) ignored SIGTERM for 5 s, sending SIGKILL" >&2
            kill -KILL -- "$target" 2>/dev/null || true
            for ((i = 0; i < 40; i++)); do
                pid_alive "$pid" || break
                sleep 0.05
            done
        fi
        if [[ "$target" == -* ]]; then
            for ((i = 0; i < 100; i++)); do
                group_alive "$pid" || break
                sleep 0.05
            done
            group_alive "$pid" && echo "mail.sh: processes of $name group $pid still alive after 5 s" >&2
        fi
    fi
    rm -f "$file"
}

# port_open PORT : true if 127.0.0.1:PORT accepts a TCP connection.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ports_free PORT... : fails the start if one of the ports is taken. (Postfix would die without
# logging anything; Dovecot would log it.)
ports_free() {
    local p
    for p in "$@"; do
        ! port_open "$p" || fail_start "127.0.0.1:$p is already in use (another instance on BASE $BASE?)"
    done
}

fail_start() {
    echo "mail.sh: $*" >&2
    local f
    for f in "$DIR/log/start.log" "$DIR/log/dovecot.log" "$DIR/log/postfix.log"; do
        [[ -s "$f" ]] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
    done
    do_stop
    exit 1
}

do_stop() {
    stop_pidfile postfix "$DIR/spool/pid/master.pid"
    stop_pidfile dovecot "$DIR/run/master.pid"
}

cmd=${1:-}
case "$cmd" in
start)
    [[ $# -eq 3 ]] || die "usage: mail.sh start DIR BASE"
    DIR=$2 BASE=$3
    [[ "$BASE" =~ ^[0-9]+$ ]] || die "BASE must be a number, got '$BASE'"
    if [[ ! -f "$DIR/dovecot.conf" ]]; then
        "$HERE/mail-config.sh" "$DIR" "$BASE"
    fi
    DIR=$(cd "$DIR" && pwd -P)
    [[ "$(cat "$DIR/base" 2>/dev/null)" == "$BASE" ]] \
        || die "$DIR was configured for BASE $(cat "$DIR/base" 2>/dev/null || echo '?'), not $BASE"

    # Stale pid files (a killed daemon, or a zombie not yet reaped) would block a start.
    pidfile_pid "$DIR/run/master.pid" >/dev/null || rm -f "$DIR/run/master.pid"
    pidfile_pid "$DIR/spool/pid/master.pid" >/dev/null || rm -f "$DIR/spool/pid/master.pid"

    # Both daemonize; stdio must be redirected or Dovecot keeps the caller's stdout open forever.
    if ! pidfile_pid "$DIR/run/master.pid" >/dev/null; then
        ports_free $((BASE + 143)) $((BASE + 993)) $((BASE + 24)) $((BASE + 26))
        rm -f "$DIR/run/anvil-auth-penalty"   # must not exist (auth penalty off), see mail-config.sh
        dovecot -c "$DIR/dovecot.conf" </dev/null >>"$DIR/log/start.log" 2>&1 \
            || fail_start "dovecot failed to start (port taken?)"
    fi
    if ! pidfile_pid "$DIR/spool/pid/master.pid" >/dev/null; then
        ports_free $((BASE + 25)) $((BASE + 587))
        "$POSTFIX_MASTER" -c "$DIR/postfix" -w </dev/null >>"$DIR/log/start.log" 2>&1 \
            || fail_start "postfix master failed to start (port taken?)"
    fi

    ports=($((BASE + 143)) $((BASE + 993)) $((BASE + 25)) $((BASE + 587)))
    for ((i = 0; ; i++)); do
        all=1
        for p in "${ports[@]}"; do port_open "$p" || { all=0; break; }; done
        ((all)) && break
        ((i < 100)) || fail_start "ports ${ports[*]} not all accepting after 10 s (first missing: $p)"
        sleep 0.1
    done

    cat > "$DIR/env" <<EOF
export COI_TEST_MAIL_DIR=$DIR
export COI_TEST_IMAP=127.0.0.1:$((BASE + 143))
export COI_TEST_IMAPS=127.0.0.1:$((BASE + 993))
export COI_TEST_SMTP=127.0.0.1:$((BASE + 25))
export COI_TEST_SUBMISSION=127.0.0.1:$((BASE + 587))
export COI_TEST_CA=$DIR/tls/ca.pem
export COI_TEST_USERS=$DIR/users
EOF
    echo "$DIR/env"
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: mail.sh stop DIR"
    DIR=$2
    [[ -d "$DIR" ]] || exit 0
    do_stop
    ;;
*)
    die "usage: mail.sh start DIR BASE | mail.sh stop DIR"
    ;;
esac
