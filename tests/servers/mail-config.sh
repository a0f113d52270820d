#!/usr/bin/env bash
# Writes a self-contained Dovecot + Postfix config for base port BASE into DIR (starts nothing): mail-config.sh DIR BASE
set -euo pipefail

die() { echo "mail-config.sh: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: mail-config.sh DIR BASE"
DIR=$1
BASE=$2
[[ "$BASE" =~ ^[0-9]+$ ]] || die "BASE must be a number, got '$BASE'"
(( BASE + 993 <= 65535 )) || die "BASE $BASE too large (BASE+993 must be <= 65535)"

P_LMTP=$((BASE + 24)) P_SMTP=$((BASE + 25)) P_SASL=$((BASE + 26))
P_IMAP=$((BASE + 143)) P_SUBM=$((BASE + 587)) P_IMAPS=$((BASE + 993))
for p in $P_LMTP $P_SMTP $P_SASL $P_IMAP $P_SUBM $P_IMAPS; do
    # The machine's init process listens on 2024.
    [[ $p -ne 2024 ]] || die "BASE $BASE puts a listener on port 2024 (taken by init); pick another BASE"
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
[[ "$DIR" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "DIR '$DIR' has characters the configs cannot take (use e.g. mktemp -d)"
chmod 755 "$DIR"
# Dovecot's mail processes (uid mail) and Postfix (uid postfix) must reach DIR.
d=$(dirname "$DIR")
while [[ "$d" != / ]]; do
    perm=$(stat -c '%A' "$d")
    [[ "${perm:9:1}" == x || "${perm:9:1}" == t ]] || die "parent dir $d is not traversable by others (chmod o+x it, or use mktemp -d)"
    d=$(dirname "$d")
done

command -v dovecot >/dev/null || die "dovecot not installed (run tests/servers/install.sh)"
[[ -x /usr/lib/postfix/sbin/master ]] || die "postfix not installed (run tests/servers/install.sh)"

mkdir -p "$DIR"/{run,state,log,tls,mail,postfix,spool,pfdata}
echo "$BASE" > "$DIR/base"

# --- TLS: a test CA (ca.pem, what clients trust) and a server cert for localhost /
# 127.0.0.1 signed by it (rustls refuses a self-signed CA cert used as the server's).
if [[ ! -s "$DIR/tls/ca.pem" || ! -s "$DIR/tls/cert.pem" || ! -s "$DIR/tls/key.pem" ]]; then
    if ! out=$(
        set -e
        cd "$DIR/tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=coi-bridge test CA" -keyout ca-key.pem -out ca.pem 2>&1
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
            -keyout key.pem -out server.csr 2>&1
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
            -extfile server.ext -out cert.pem 2>&1
        rm -f server.csr server.ext ca.srl
    ); then
        echo "$out" >&2
        die "openssl failed"
    fi
fi
chmod 644 "$DIR/tls/cert.pem" "$DIR/tls/ca.pem"
chmod 600 "$DIR/tls/key.pem" "$DIR/tls/ca-key.pem"

# --- Users (Dovecot passwd-file; Postfix accepts every @example.org and delivers via LMTP;
#     unknown local parts are accepted at RCPT and bounce with a DSN to the sender) ---
# Kept if present: users added at run time survive a re-run.
user_line() { # localpart password
    printf '%s@example.org:{PLAIN}%s:8:8::%s/mail/example.org/%s::\n' "$1" "$2" "$DIR" "$1"
}
if [[ ! -s "$DIR/users" ]]; then
    {
        echo "# Dovecot passwd-file (lines starting with # are ignored). Add a user by appending one line:"
        echo "#   NAME@example.org:{PLAIN}PASSWORD:8:8::$DIR/mail/example.org/NAME::"
        echo "# No restart needed, but Dovecot re-reads this file at most once per wall-clock second: if a"
        echo "# login happened in the second of the append, the user is known only from the next second."
        echo "# $DIR/add-user.sh NAME PASSWORD appends and waits for that."
        for u in bridge alice bob carol; do user_line "$u" "$u-secret"; done
    } > "$DIR/users"
fi
chown root:dovecot "$DIR/users"
chmod 640 "$DIR/users"
mkdir -p "$DIR/mail/example.org"
chown -R mail:mail "$DIR/mail"
chown postfix:postfix "$DIR/pfdata"

cat > "$DIR/add-user.sh" <<EOF
#!/usr/bin/env bash
# Adds a mail user to this test instance: add-user.sh NAME[@example.org] PASSWORD (usable at once, no restart)
set -euo pipefail
[[ \$# -eq 2 ]] || { echo "usage: \$0 NAME[@example.org] PASSWORD" >&2; exit 1; }
name=\${1%@example.org}
[[ "\$name" =~ ^[A-Za-z0-9._+-]+\$ ]] || { echo "\$0: bad user name '\$1' (domain must be example.org)" >&2; exit 1; }
[[ "\$2" != *:* && "\$2" != *\$'\\n'* ]] || { echo "\$0: password must not contain ':' or newlines" >&2; exit 1; }
grep -q "^\$name@example.org:" "$DIR/users" && { echo "\$0: user \$name@example.org exists" >&2; exit 1; }
printf '%s@example.org:{PLAIN}%s:8:8::%s/mail/example.org/%s::\n' "\$name" "\$2" "$DIR" "\$name" >> "$DIR/users"
# Dovecot re-reads the file at most once per second: wait for the next second so the user is known.
s=\$(date +%s)
while [[ \$(date +%s) == "\$s" ]]; do sleep 0.02; done
EOF
chmod 755 "$DIR/add-user.sh"

# --- Dovecot ---
cat > "$DIR/dovecot.conf" <<EOF
# Self-contained test Dovecot (nothing from /etc). Start: dovecot -c $DIR/dovecot.conf  (or -F for foreground)
instance_name = coi-mail-$BASE
base_dir = $DIR/run
state_dir = $DIR/state
log_path = $DIR/log/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1

ssl = yes
ssl_cert = <$DIR/tls/cert.pem
ssl_key = <$DIR/tls/key.pem
ssl_dh = </usr/share/dovecot/dh.pem

disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests use wrong passwords on purpose. Failures answer after <= 0.5 s instead of 2 s, and the
# per-IP auth penalty (2..15 s delay on the next login from 127.0.0.1, i.e. every test) is off:
# without the anvil-auth-penalty socket the auth process silently skips it (see service anvil).
auth_failure_delay = 0
first_valid_uid = 8
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000
mailbox_idle_check_interval = 1 secs

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DIR/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $DIR/users
}

namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \Trash
    auto = subscribe
  }
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $P_IMAP
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $P_IMAPS
    ssl = yes
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $P_LMTP
  }
}
service auth {
  inet_listener sasl {
    address = 127.0.0.1
    port = $P_SASL
  }
}
protocol lmtp {
  postmaster_address = postmaster@example.org
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
# Server metadata per user (the push notification OX driver reads its switch there).
mail_attribute_dict = file:%h/dovecot-attributes
# Push events (notify + push_notification, OX driver) once push.sh wrote this file.
!include_try $DIR/push.conf
EOF
# A socket left from an older config would make auth retry it for 5 s and then log an error.
rm -f "$DIR/run/anvil-auth-penalty"

# --- push.sh: Dovecot's push events (the push_notification plugin's OX driver: an HTTP PUT
#     of JSON for each mail LMTP delivers into a user's INBOX), off until it is run ---
cat > "$DIR/push.sh" <<'EOF'
#!/usr/bin/env bash
# Dovecot's push events: push.sh URL USER... (on, to URL, for each USER) | push.sh off
# Takes effect for LMTP sessions after a Dovecot restart (or doveadm reload).
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
[[ $# -ge 1 ]] || { echo "usage: $0 URL USER... | $0 off" >&2; exit 1; }
if [[ "$1" == off ]]; then
    rm -f "$DIR/push.conf"
    exit 0
fi
[[ "$1" =~ ^http://[^[:space:]]+$ ]] || { echo "$0: URL must be http://..., got '$1'" >&2; exit 1; }
url=$1
shift
{
    echo 'protocol lmtp {'
    echo '  mail_plugins = $mail_plugins notify push_notification'
    echo '}'
    echo 'plugin {'
    echo "  push_notification_driver = ox:url=$url timeout_msecs=2000 max_retries=0"
    echo '}'
} > "$DIR/push.conf.new"
mv "$DIR/push.conf.new" "$DIR/push.conf"
# The OX driver posts only for users with this server metadata (user= is the event's "user").
for u in "$@"; do
    doveadm -c "$DIR/dovecot.conf" mailbox metadata set -u "$u" -s "" /private/vendor/vendor.dovecot/http-notify "user=$u"
done
EOF
chmod 755 "$DIR/push.sh"

# --- Postfix main.cf ---
cat > "$DIR/postfix/main.cf" <<EOF
# Self-contained test Postfix. Start: /usr/lib/postfix/sbin/master -c $DIR/postfix -w  (or -d for foreground)
compatibility_level = 3.6
queue_directory = $DIR/spool
data_directory = $DIR/pfdata
maillog_file = $DIR/log/postfix.log
maillog_file_prefixes = $DIR/log
myhostname = mail.example.org
mydomain = example.org
myorigin = example.org
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
virtual_mailbox_domains = example.org
virtual_transport = lmtp:inet:127.0.0.1:$P_LMTP
default_transport = error:outbound mail disabled in tests
relay_transport = error:outbound mail disabled in tests
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated reject_unauth_destination
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:$P_SASL
smtpd_tls_cert_file = $DIR/tls/cert.pem
smtpd_tls_key_file = $DIR/tls/key.pem
smtpd_tls_security_level = may
smtpd_tls_auth_only = no
biff = no
message_size_limit = 52428800
# Retry fast: mail accepted while Dovecot (LMTP) is down is delivered ~0.2 s after it is back.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
EOF

# --- Postfix master.cf: Debian's service list, chroot = n everywhere, no pipe services,
#     the public smtp listener replaced by SMTP (BASE+25) and submission (BASE+587) on 127.0.0.1 ---
MASTER_SRC=
for f in /usr/share/postfix/master.cf.dist /etc/postfix/master.cf.proto; do
    [[ -r $f ]] && { MASTER_SRC=$f; break; }
done
[[ -n $MASTER_SRC ]] || die "no master.cf.dist / master.cf.proto found"
{
    echo "# Generated from $MASTER_SRC: chroot = n on every service, pipe services dropped."
    echo "# service type  private unpriv  chroot  wakeup  maxproc command + args"
    printf '%-10s inet  n       -       n       -       -       smtpd\n' "127.0.0.1:$P_SMTP"
    printf '%-10s inet  n       -       n       -       -       smtpd\n' "127.0.0.1:$P_SUBM"
    echo "  -o smtpd_sasl_auth_enable=yes"
    echo "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject"
    awk '
        /^#/ || /^[[:space:]]*$/ { next }
        /^[[:space:]]/ { if (keep) print; next }      # continuation line of the previous service
        {
            keep = !($2 == "inet" || $8 == "pipe")     # drop the public listeners and external pipe delivery
            if (!keep) next
            $5 = "n"
            line = sprintf("%-10s %-5s %-7s %-7s %-7s %-7s %-7s", $1, $2, $3, $4, $5, $6, $7)
            for (i = 8; i <= NF; i++) line = line " " $i
            print line
        }' "$MASTER_SRC"
} > "$DIR/postfix/master.cf"
grep -q '^qmgr ' "$DIR/postfix/master.cf" && grep -q '^postlog ' "$DIR/postfix/master.cf" \
    || die "unexpected master.cf source $MASTER_SRC (no qmgr/postlog service)"

# Postfix sleeps ~2 s at start if a .cf file changed within the last second.
touch -d '1 minute ago' "$DIR/postfix/main.cf" "$DIR/postfix/master.cf"

# --- Postfix queue dirs by hand (postfix check would take ~2 s) ---
install -d -o postfix -m 700 "$DIR"/spool/{active,bounce,corrupt,defer,deferred,flush,hold,incoming,private,saved,trace}
install -d -o postfix -g postdrop -m 730 "$DIR/spool/maildrop"
install -d -o postfix -g postdrop -m 710 "$DIR/spool/public"
install -d -m 755 "$DIR/spool/pid"
