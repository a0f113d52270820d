#!/usr/bin/env bash
# Seeds fuzz/corpus/TARGET/ for every target: the mail fixtures of tests/fixtures/eml, the
# PGP messages of fuzz/seeds/decrypt (made with gpg for fuzz/keys/fuzz-secret.bin), and a
# few hand-written inputs per parser. Idempotent; existing corpus files are kept.
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz")
corpus=${FUZZ_CORPUS:-$fuzz/corpus}  # FUZZ_CORPUS: somewhere else (tests/it/fuzz_smoke.rs)
for t in parse text matrix_html decrypt pgpmime autocrypt invite_link vcard appservice_txn telegram_update; do
  mkdir -p "$corpus/$t"
done
seed() { printf '%s' "$2" >"$corpus/$1/seed-$3"; }

for eml in "$root"/tests/fixtures/eml/*.eml; do
  name=$(basename "$eml" .eml)
  cp "$eml" "$corpus/parse/$name"
  cp "$eml" "$corpus/pgpmime/$name"
  cp "$eml" "$corpus/text/$name"
done
for asc in "$fuzz"/seeds/decrypt/*.asc; do
  name=$(basename "$asc" .asc)
  cp "$asc" "$corpus/decrypt/$name"
  # The same message as a PGP/MIME mail, for the payload finder and the parser.
  {
    printf 'From: a@example.org\r\nTo: b@example.org\r\nMessage-ID: <%s@example.org>\r\n' "$name"
    printf 'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"\r\n\r\n'
    printf -- '--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n'
    printf -- '--b\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
    cat "$asc"
    printf '\r\n--b--\r\n'
  } >"$corpus/pgpmime/$name.eml"
  cp "$corpus/pgpmime/$name.eml" "$corpus/parse/pgp-$name.eml"
done

seed text '<p>Hi &amp; <b>bye</b></p><script>x</script><style>p{}</style>&#x1F600;&lt;' html
seed text $'> quoted\r\n> more\r\n\r\nanswer \r\nflowed\r\n-- \r\nfooter' plain
seed matrix_html '<mx-reply><blockquote>q</blockquote></mx-reply><b>b</b> <a href="https://x.org/">l</a><ul><li>a</li></ul><ol><li>b</li></ol><pre><code>x</code></pre>&amp;&#65;' reply
seed matrix_html '<blockquote><blockquote><p>deep</p></blockquote></blockquote><a href="mailto:a@b">a@b</a><br/><hr>' nested
seed autocrypt 'addr=alice@example.org; prefer-encrypt=mutual; keydata=xjMEZ0AAABYJKwYBBAHaRw8BAQdA AAAA' header
seed autocrypt 'addr=bob@example.org; _extra=1; keydata=AAECAw==' gossip
seed invite_link 'link https://i.delta.chat/#0123456789ABCDEF0123456789ABCDEF01234567&v=3&i=inv&s=sec&a=bridge%40example.org&n=COI&x=Xk3_mQ9-pL2vR8tY&g=Team%20%F0%9F%9A%80' https
seed invite_link 'OPENPGP4FPR:0123456789abcdef0123456789abcdef01234567#a=alice%40example.org&n=Alice&i=x&s=y' openpgp
seed vcard $'BEGIN:VCARD\r\nVERSION:4.0\r\nEMAIL:alice@example.org\r\nFN:Alice\\, A.\r\nKEY:data:application/pgp-keys;base64\\,AQID\r\n +oA==\r\nEND:VCARD\r\n' v4
seed vcard $'BEGIN:VCARD\nVERSION:3.0\nitem1.EMAIL;TYPE=INTERNET:bob@example.org\nKEY;TYPE=PGP;ENCODING=b:AQID\nEND:VCARD\n' v3
seed appservice_txn '{"events":[{"type":"m.room.message","sender":"@a:hs","room_id":"!r:hs","event_id":"$e","content":{"msgtype":"m.text","body":"> <@b:hs> q\n\nhi","format":"org.matrix.custom.html","formatted_body":"<mx-reply>q</mx-reply><b>hi</b>"}},{"type":"m.room.message","sender":"@admin:hs","room_id":"!r:hs","event_id":"$c","content":{"msgtype":"m.text","body":"!coi link https://i.delta.chat/#0123"}},{"type":"m.room.power_levels","sender":"@admin:hs","content":{"users":{"@admin:hs":100},"redact":50,"users_default":0},"room_id":"!r:hs","event_id":"$p","state_key":""},{"type":"m.room.create","sender":"@admin:hs","content":{"room_version":"11","additional_creators":["@b:hs"]}}],"ephemeral":[{"type":"m.receipt","room_id":"!r:hs","content":{"$e":{"m.read":{"@a:hs":{"ts":1}}}}}]}' txn
seed telegram_update '{"ok":true,"result":[{"update_id":1,"message":{"message_id":5,"date":1700000000,"chat":{"id":-100123,"type":"supergroup","title":"Garden"},"from":{"id":42,"is_bot":false,"first_name":"Alice","username":"alice"},"text":"/coi_link https://i.delta.chat/#x","entities":[{"type":"bot_command","offset":0,"length":9}]}},{"update_id":2,"edited_message":{"message_id":5,"date":1700000000,"edit_date":1700000001,"chat":{"id":-100123,"type":"supergroup","title":"Garden"},"from":{"id":42,"is_bot":false,"first_name":"Alice"},"text":"edited"}},{"update_id":3,"my_chat_member":{"chat":{"id":-100124,"type":"group","title":"X"},"from":{"id":42,"is_bot":false,"first_name":"Alice"},"date":1700000000,"old_chat_member":{"user":{"id":7,"is_bot":true,"first_name":"bot"},"status":"left"},"new_chat_member":{"user":{"id":7,"is_bot":true,"first_name":"bot"},"status":"member"}}}]}' batch
seed telegram_update '{"ok":true,"result":[{"update_id":9,"message":{"message_id":6,"date":1700000000,"chat":{"id":-100123,"type":"supergroup","title":"G"},"from":{"id":42,"is_bot":false,"first_name":"A"},"photo":[{"file_id":"f","file_unique_id":"u","width":1,"height":1,"file_size":3}],"caption":"pic","media_group_id":"m"}},{"update_id":10,"unknown_kind":{"x":1}}]}' photo
echo "seeded $(find "$corpus" -type f | wc -l) files under $corpus"
