//! The offline commands: `key show|export-public|vcard`, `contact import` and `invite`, working on the store beside the daemon.

use std::path::Path;

use anyhow::Context as _;

use crate::coi::{crypto, vcard};
use crate::config::Loaded;
use crate::hub::e2ee::Identity;
use crate::store::keys::{KeyLearned, KeySource};
use crate::store::{self, Store};

/// The daemon's store and key. Never new ones: only the daemon's first start creates them,
/// so an invite or fingerprint always carries the key the daemon has.
async fn open(loaded: &Loaded) -> anyhow::Result<(std::sync::Arc<dyn Store>, Identity)> {
    let cfg = &loaded.config;
    let store = existing_store(loaded).await?;
    if store.account_key().await?.is_none() {
        let path = store::sqlite_path(&cfg.store.url, &cfg.store.state_dir()).unwrap_or_default();
        return Err(store::Uninitialized::NoKey { path, hint: fix_hint(loaded) }.into());
    }
    let id = Identity::load_or_create(store.as_ref(), &cfg.account.address, loaded.key_passphrase.clone()).await?;
    Ok((store, id))
}

/// How to get a store where the config points.
fn fix_hint(loaded: &Loaded) -> String {
    let cfg = &loaded.config;
    format!(
        " (store.url = {:?}, state dir {}): the daemon creates the store and the bridge's key on its first \
         start. Start it once with `coi-bridge run`, or fix store.url or store.state_dir in {} (under systemd \
         the state dir is /var/lib/coi-bridge)",
        crate::store::redact_url(&cfg.store.url),
        cfg.store.state_dir().display(),
        loaded.source.display()
    )
}

/// `key show`: the address and fingerprint.
pub async fn key_show(loaded: &Loaded) -> anyhow::Result<String> {
    let (_, id) = open(loaded).await?;
    Ok(format!("address      {}\nfingerprint  {}\n", id.addr, id.fingerprint))
}

/// `key export-public`: the armored public key.
pub async fn key_export_public(loaded: &Loaded) -> anyhow::Result<String> {
    let (_, id) = open(loaded).await?;
    Ok(crypto::public_armored(&id.public))
}

/// `key vcard`: the bridge as a vCard with its key, for Delta Chat's "import contact".
pub async fn key_vcard(loaded: &Loaded) -> anyhow::Result<String> {
    let (_, id) = open(loaded).await?;
    Ok(vcard::render(&vcard::VcardContact {
        addr: id.addr.clone(),
        name: Some(loaded.config.account.display_name.clone()),
        key: Some(crypto::public_to_bytes(&id.public)),
    }))
}

/// `contact import FILE.vcf`: every contact with a key; one line per contact.
pub async fn contact_import(loaded: &Loaded, file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let contacts = vcard::parse(&text);
    anyhow::ensure!(!contacts.is_empty(), "{}: no vCard with an EMAIL in it", file.display());
    let (store, _) = open(loaded).await?;
    let mut out = String::new();
    for c in contacts {
        let Some(keydata) = &c.key else {
            out.push_str(&format!("skipped   {}: the card has no KEY\n", c.addr));
            continue;
        };
        let key = match crypto::public_from_bytes(keydata) {
            Ok(k) => k,
            Err(e) => {
                out.push_str(&format!("skipped   {}: {e}\n", c.addr));
                continue;
            }
        };
        let fpr = crypto::fingerprint(&key);
        // The operator's own import is an out-of-band key: verified, and it wins over a
        // key learned from mail (the change is applied as `key accept` would).
        let line = match store.learn_contact_key(&c.addr, &fpr, keydata, KeySource::Vcard, true).await? {
            KeyLearned::New => format!("imported  {} {fpr}\n", c.addr),
            KeyLearned::Same => format!("unchanged {} {fpr}\n", c.addr),
            KeyLearned::Replaced { old_fingerprint } | KeyLearned::Flagged { old_fingerprint } => {
                if !store.accept_key_change(&c.addr, &fpr).await? {
                    anyhow::bail!("{}: the key change to {fpr} could not be recorded", c.addr);
                }
                format!("replaced  {} {old_fingerprint} -> {fpr}\n", c.addr)
            }
        };
        out.push_str(&line);
    }
    Ok(out)
}

/// `key changes`: keys that arrived for known addresses and were kept aside (key
/// continuity), for the operator to review.
pub async fn key_changes(loaded: &Loaded) -> anyhow::Result<String> {
    let (store, _) = open(loaded).await?;
    let changes = store.all_key_changes().await?;
    if changes.is_empty() {
        return Ok("no key changes kept aside\n".into());
    }
    let mut out = String::from("ADDRESS  KEY IN USE  NEW KEY (kept aside)  SEEN\n");
    for (addr, old, new, seen) in changes {
        let seen = chrono::DateTime::from_timestamp(seen, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
        out.push_str(&format!("{addr}  {old}  {new}  {seen}\n"));
    }
    out.push_str("accept one with: coi-bridge key accept ADDRESS NEW_KEY (after checking it with its owner)\n");
    Ok(out)
}

/// `key accept ADDRESS FINGERPRINT`: the operator confirmed a kept-aside key with its
/// owner; it becomes the address's (verified) key. Mail set apart under the old key stays
/// where it is.
pub async fn key_accept(loaded: &Loaded, addr: &str, fingerprint: &str) -> anyhow::Result<String> {
    let (store, _) = open(loaded).await?;
    if !store.accept_key_change(addr, fingerprint).await? {
        anyhow::bail!("no key {fingerprint} kept aside for {addr}; `coi-bridge key changes` lists the ones there are");
    }
    Ok(format!("accepted  {} {}\n", addr.to_lowercase(), fingerprint.to_ascii_uppercase()))
}

/// `invite [--group NAME] [--qr FILE]`: a SecureJoin invite link, printed (and drawn).
/// The running daemon answers the joiner.
pub async fn invite(loaded: &Loaded, group: Option<&str>, qr: Option<&Path>) -> anyhow::Result<String> {
    let (store, id) = open(loaded).await?;
    let invite =
        crate::hub::securejoin::create_invite(store.as_ref(), &id, &loaded.config.account.display_name, group).await?;
    let link = invite.render();
    if let Some(path) = qr {
        crate::qr::write_png(&link, path)?;
    }
    Ok(format!("{link}\n"))
}

/// `join LINK`: starts joining a Delta Chat user's (or group's) invite link. The running
/// daemon sends the request within seconds and completes the exchange.
pub async fn join(loaded: &Loaded, link: &str) -> anyhow::Result<String> {
    let (store, id) = open(loaded).await?;
    let id = std::sync::Arc::new(id);
    let me = crate::coi::Mailbox::new(&id.addr, Some(&loaded.config.account.display_name));
    let outbound = crate::hub::outbound::Outbound::new(
        store.clone(),
        me,
        id.clone(),
        loaded.config.account.encryption,
        crate::hub::wake::OutboxNotifier::new(),
    );
    let join = crate::hub::securejoin::start_join(store.as_ref(), &id, &outbound, link).await?;
    let daemon = if wake_daemon(loaded).await {
        "told the running daemon, which completes it".to_owned()
    } else {
        format!(
            "no daemon answered on [http] listen; the daemon completes it when it runs (within {} s if it runs \
             elsewhere)",
            crate::hub::delivery::SAFETY_POLL.as_secs()
        )
    };
    Ok(match &join.group_name {
        Some(g) => format!("joining group {g:?} of {}; {daemon}\n", join.inviter_addr),
        None => format!("joining {}; {daemon}\n", join.inviter_addr),
    })
}

/// Tells a running daemon that this process queued rows for `loaded`'s account
/// (`POST /wake`), so it sends them now rather than at its next safety poll. Best effort:
/// a daemon that is not running finds the rows when it starts. `true` when it took it.
async fn wake_daemon(loaded: &Loaded) -> bool {
    let addr = crate::http::local_addr(loaded.config.http.listen);
    let url = format!("http://{addr}/wake?account={}", loaded.key());
    match crate::http::post_wake(&url, std::time::Duration::from_secs(5)).await {
        Ok(202) => true,
        Ok(code) => {
            tracing::debug!(%url, code, "the daemon did not take the wake-up; it finds the rows by itself");
            false
        }
        Err(e) => {
            tracing::debug!(%url, error = %e, "no daemon answered; it finds the rows when it runs");
            false
        }
    }
}

/// `generate-registration [--bridge ID] [--force]`: writes the Matrix appservice
/// registration (fresh tokens) to the bridge's `registration` path, relative to the
/// config file that names it. Refuses to replace an existing file unless forced: new
/// tokens cut the homeserver off until it loads the new file.
///
/// `accounts` are the accounts to look in: the one `--account` names, or every account
/// of the daemon (the main file's and its `[accounts] dir`'s). One registration serves
/// every account on a homeserver, so Matrix bridges of several accounts that name the
/// same file are one choice; bridges naming different files need `--bridge` or
/// `--account`.
pub fn generate_registration(accounts: &[Loaded], bridge: Option<&str>, force: bool) -> anyhow::Result<String> {
    let mut matrix: Vec<(&Loaded, &coi_bridge_matrix::config::MatrixConfig, std::path::PathBuf)> = Vec::new();
    for loaded in accounts {
        let base = loaded.source.parent().unwrap_or(Path::new("."));
        for m in loaded
            .config
            .bridge
            .iter()
            .filter_map(|b| b.config::<coi_bridge_matrix::config::MatrixConfig>())
            .filter(|m| bridge.is_none_or(|id| m.id == id))
        {
            let path = if m.registration.is_absolute() { m.registration.clone() } else { base.join(&m.registration) };
            let same = |p: &std::path::PathBuf| {
                *p == path || matches!((p.canonicalize(), path.canonicalize()), (Ok(a), Ok(b)) if a == b)
            };
            if !matrix.iter().any(|(_, _, p)| same(p)) {
                matrix.push((loaded, m, path));
            }
        }
    }
    let (loaded, m, path) = match matrix.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!(
            "no [[bridge]] with kind = \"matrix\"{} in {}",
            bridge.map(|b| format!(" and id {b:?}")).unwrap_or_default(),
            accounts.iter().map(|l| l.source.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
        several => anyhow::bail!(
            "several Matrix bridges with different registration files ({}): choose one with --bridge ID or --account ADDRESS",
            several
                .iter()
                .map(|(l, m, p)| format!("{:?} in {} → {}", m.id, l.source.display(), p.display()))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists; its tokens are what the homeserver knows. Pass --force to replace them (then reload the homeserver)",
            path.display()
        );
    }
    let url = m.appservice_url.clone().unwrap_or_else(|| format!("http://{}", loaded.config.http.listen));
    let reg = coi_bridge_matrix::registration::Registration::generate(
        &m.id,
        &url,
        &m.server_name,
        m.bot_localpart.as_deref().unwrap_or(coi_bridge_matrix::config::DEFAULT_BOT),
        &m.ghost_prefix,
    );
    write_private(&path, reg.to_yaml().as_bytes())?;
    Ok(format!(
        "wrote {}\nadd it to the homeserver's app_service_config_files and restart the homeserver\n\
         one registration serves every account of this daemon on that homeserver: point each account's Matrix \
         [[bridge]] registration at this file, give each its own bot_localpart starting with {:?} (users \
         @{}*:{} and the ghosts @{}*:{} are this appservice's), and keep ghost_prefix and server_name the same\n",
        path.display(),
        reg.sender_localpart,
        reg.sender_localpart,
        reg.server_name,
        reg.ghost_prefix,
        reg.server_name,
    ))
}

/// Writes a file readable by its owner only (it holds tokens), whatever the umask and
/// whatever mode an older file had: the data goes to a new 0600 file beside it, which
/// then replaces the old one.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    // A leftover from a cut-off run holds tokens nobody uses.
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })
}

/// The daemon's store for a command beside it: never a new, empty one (a shell without
/// the service's `$STATE_DIRECTORY`, or a mistyped path, would otherwise make one).
pub(crate) async fn existing_store(loaded: &Loaded) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let cfg = &loaded.config;
    let state_dir = cfg.store.state_dir();
    if let Some(path) = store::sqlite_path(&cfg.store.url, &state_dir)
        && !path.exists()
    {
        return Err(store::Uninitialized::NoStore { path, hint: fix_hint(loaded) }.into());
    }
    store::open_existing_with(&cfg.store.url, &state_dir, &loaded.store_options()).await
}

/// `portals`: every link between a COI chat and a remote chat, one per line.
pub async fn portals(loaded: &Loaded) -> anyhow::Result<String> {
    let store = existing_store(loaded).await?;
    let portals = store.portals().await?;
    if portals.is_empty() {
        return Ok("no portals yet: say `!coi bridge` in a Matrix room or `/coi_bridge` in a Telegram group\n".into());
    }
    let mut rows = vec![["BRIDGE".to_owned(), "REMOTE CHAT".to_owned(), "COI CHAT".to_owned(), "MEMBERS".to_owned()]];
    for p in &portals {
        let (chat, members) = match store.chat(p.chat_id).await? {
            Some(c) => {
                let what = match c.kind {
                    store::ChatKind::Group => format!("group {:?}", c.name),
                    _ => format!("1:1 {}", c.key),
                };
                (what, c.members.len().to_string())
            }
            None => (format!("chat {} (gone)", p.chat_id), "-".into()),
        };
        rows.push([p.bridge.clone(), p.remote_chat.clone(), chat, members]);
    }
    Ok(table(&rows))
}

/// `migration [PORTAL] [--html FILE]`: who has moved, per portal; with `--html`, the
/// one-page report written to FILE (0644: it holds names and addresses, no secret).
pub async fn migration(loaded: &Loaded, portal: Option<&str>, html: Option<&Path>) -> anyhow::Result<String> {
    let store = existing_store(loaded).await?;
    let labels = crate::bridges::labels(&loaded.config.bridge);
    let reports = crate::report::gather(store.as_ref(), &labels, portal).await?;
    match html {
        None => Ok(crate::report::text(&reports)),
        Some(file) => {
            let page = crate::report::html(&reports, chrono::Utc::now().timestamp());
            std::fs::write(file, page).with_context(|| format!("cannot write {}", file.display()))?;
            Ok(format!("wrote {} ({} portals)\n", file.display(), reports.len()))
        }
    }
}

/// `unlink BRIDGE REMOTE_CHAT`: removes one portal.
pub async fn unlink(loaded: &Loaded, bridge: &str, remote_chat: &str) -> anyhow::Result<String> {
    let store = existing_store(loaded).await?;
    if store.delete_portal(bridge, remote_chat).await? {
        Ok(format!("unlinked {remote_chat} on {bridge}; its COI chat is no longer bridged there\n"))
    } else {
        anyhow::bail!("no portal for {remote_chat:?} on bridge {bridge:?}; `coi-bridge portals` lists them")
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `backup FILE`: a consistent copy of the store taken while the daemon runs, with
/// progress on stderr.
pub fn backup(loaded: &Loaded, dest: &Path) -> anyhow::Result<String> {
    use std::io::{IsTerminal as _, Write as _};
    let cfg = &loaded.config;
    let src = store::backup::sqlite_path(&cfg.store.url, &cfg.store.state_dir())?;
    if !src.exists() {
        return Err(store::Uninitialized::NoStore { path: src, hint: fix_hint(loaded) }.into());
    }
    let tty = std::io::stderr().is_terminal();
    let mut last_percent = None;
    let summary = store::backup::backup(&src, dest, |p| {
        let percent = (p.copied * 100).checked_div(p.total).unwrap_or(100);
        // On a terminal one line redrawn; in a log one line per 10 %.
        if tty {
            eprint!("\rbacking up {}: {percent:>3}% ({}/{} pages)", src.display(), p.copied, p.total);
            let _ = std::io::stderr().flush();
        } else if last_percent.is_none_or(|l| percent / 10 > l / 10) {
            eprintln!("backing up {}: {percent}% ({}/{} pages)", src.display(), p.copied, p.total);
        }
        last_percent = Some(percent);
    })?;
    if tty {
        eprintln!();
    }
    Ok(format!(
        "backup written to {}: {} KiB, schema {}, {} messages, integrity ok\n",
        dest.display(),
        summary.bytes / 1024,
        summary.schema_version,
        summary.messages
    ))
}

/// `quarantine`: what is set apart (rejected mail by id, unverified chats, dead letters)
/// and how long it is kept.
pub async fn quarantine_list(loaded: &Loaded) -> anyhow::Result<String> {
    let store = existing_store(loaded).await?;
    let r = &loaded.config.retention;
    let mut out = String::new();
    let rows = store.set_apart().await?;
    if rows.is_empty() {
        out.push_str("no rejected mail\n");
    } else {
        let mut table_rows = vec![["ID".to_owned(), "RECORDED".into(), "BYTES".into(), "FROM".into(), "REASON".into()]];
        for s in &rows {
            let when = chrono::DateTime::from_timestamp(s.recorded_at, 0)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let from = header_value(&s.head, "from").unwrap_or_else(|| "-".into());
            let mut reason = printable(&s.reason, 100);
            if s.released {
                reason = format!("(released: the running daemon takes it through ingest) {reason}");
            }
            table_rows.push([s.id.to_string(), when, s.bytes.to_string(), printable(&from, 60), reason]);
        }
        out.push_str(&table(&table_rows));
    }
    let chats = store.unverified_chats().await?;
    if !chats.is_empty() {
        out.push_str("\nunverified chats (mail not signed by its sender's key):\n");
        let mut table_rows = vec![["ADDRESS".to_owned(), "MESSAGES".into(), "BYTES".into(), "LAST".into()]];
        for c in &chats {
            let last = chrono::DateTime::from_timestamp(c.last_at, 0)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            table_rows.push([printable(&c.addr, 60), c.messages.to_string(), c.bytes.to_string(), last]);
        }
        out.push_str(&table(&table_rows));
    }
    let dead = store.dead_letter_count().await?;
    if dead > 0 {
        out.push_str(&format!("\n{dead} dead letters (bridge events set aside)\n"));
    }
    out.push_str(&format!(
        "\nkept {} days and {} MiB at most ([retention] in {}); `coi-bridge quarantine release ID` takes a rejected \
         mail through ingest again, `coi-bridge quarantine drop ID` deletes it\n",
        r.quarantine_max_age_days,
        r.quarantine_max_bytes / (1024 * 1024),
        loaded.source.display()
    ));
    Ok(out)
}

/// `quarantine release ID`: the running daemon takes the mail's raw copy through ingest
/// again (with today's keys, members and limits). A message already recorded is not
/// delivered twice; one that is still refused is set apart again with its reason.
pub async fn quarantine_release(loaded: &Loaded, id: i64) -> anyhow::Result<String> {
    use crate::store::retention::Release;
    let store = existing_store(loaded).await?;
    match store.release_rejected(id).await? {
        Release::Released => {
            wake_daemon(loaded).await;
            Ok(format!(
                "released {id}: the running daemon takes it through ingest now (at the latest within {} s); if it is \
                 still refused it is set apart again with its reason\n",
                crate::retention::RELEASE_POLL.as_secs()
            ))
        }
        Release::AlreadyReleased => Ok(format!("{id} is already released; the running daemon takes it\n")),
        Release::NoCopy => anyhow::bail!(
            "{id} has no copy to release: it was too large to fetch and is still on the mail server (raise \
             imap.max_message_bytes to fetch such mail)"
        ),
        Release::NotFound => anyhow::bail!("no rejected mail {id}; `coi-bridge quarantine` lists them"),
    }
}

/// `quarantine drop ID`: deletes a rejected mail.
pub async fn quarantine_drop(loaded: &Loaded, id: i64) -> anyhow::Result<String> {
    let store = existing_store(loaded).await?;
    if store.drop_rejected(id).await? {
        Ok(format!("dropped {id}\n"))
    } else {
        anyhow::bail!("no rejected mail {id}; `coi-bridge quarantine` lists them")
    }
}

/// A header's (unfolded) value from the start of a raw mail, if it is there.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_owned());
        }
    }
    value
}

/// Attacker-chosen text made safe for a terminal: no control characters, at most `max`
/// characters.
fn printable(s: &str, max: usize) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.chars().count() > max { clean.chars().take(max.saturating_sub(1)).chain(['…']).collect() } else { clean }
}

/// `migrate-store --to URL`: copies the SQLite store of each of `accounts` (the daemon
/// stopped) into the empty PostgreSQL store where the daemon looks for that account once
/// `store.url` is URL: the main `[account]`'s into the URL's default schema, a directory
/// account's into its own ([`migrate_schema`]). Per account: progress on stderr, then a
/// table of row counts on both sides on stdout; an error if any differs (that account's
/// copy is rolled back). Several accounts are copied in turn, each verified before the
/// next; one that has no store yet (the daemon never ran it) is left to the daemon.
pub async fn migrate_store(accounts: &[Loaded], to: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let several = accounts.len() > 1;
    let mut sources = Vec::with_capacity(accounts.len());
    let mut no_store = Vec::new();
    for loaded in accounts {
        let cfg = &loaded.config;
        let Some(src) = store::sqlite_path(&cfg.store.url, &cfg.store.state_dir()) else {
            anyhow::bail!(
                "store.url = {:?} is not a SQLite store: migrate-store copies a SQLite store into PostgreSQL",
                store::redact_url(&cfg.store.url)
            );
        };
        if src.exists() {
            sources.push((loaded, src));
        } else if several {
            no_store.push(loaded);
        } else {
            return Err(store::Uninitialized::NoStore { path: src, hint: fix_hint(loaded) }.into());
        }
    }
    if sources.is_empty()
        && let Some(first) = no_store.first()
    {
        // Not one account has a store: the state dir is more likely wrong than every account new.
        let cfg = &first.config;
        let path = store::sqlite_path(&cfg.store.url, &cfg.store.state_dir()).unwrap_or_default();
        return Err(store::Uninitialized::NoStore { path, hint: fix_hint(first) }.into());
    }
    let mut copied: Vec<String> = Vec::new();
    for (loaded, src) in &sources {
        let address = &loaded.config.account.address;
        let schema = migrate_schema(loaded);
        let into = schema.as_deref().map_or_else(|| "the default schema".to_owned(), |s| format!("schema {s}"));
        if several {
            eprintln!("account {address}: copying {} into {into}", src.display());
        }
        let done = migrate_account(src, to, schema.as_deref()).await;
        let done = match done {
            Ok(done) => done,
            Err(e) if several => {
                let before = if copied.is_empty() {
                    "no account was copied before it".to_owned()
                } else {
                    format!(
                        "{} copied before it (their stores are in PostgreSQL now: copy the others one at a \
                         time with --account ADDRESS)",
                        copied.join(", ")
                    )
                };
                return Err(e.context(format!("account {address} ({into}): {before}")));
            }
            Err(e) => return Err(e),
        };
        let header = if several || schema.is_some() { format!("account {address} ({into}):\n") } else { String::new() };
        print!("{header}{done}");
        let _ = std::io::stdout().flush();
        copied.push(address.clone());
    }
    let mut out = String::new();
    for loaded in &no_store {
        out.push_str(&format!(
            "account {}: no store yet (the daemon never ran it), nothing to copy; the daemon makes its store in \
             PostgreSQL on its first start\n",
            loaded.config.account.address
        ));
    }
    if several {
        out.push_str(&format!("{} accounts copied, every count matches. ", copied.len()));
    }
    out.push_str("Set store.url to the PostgreSQL URL before starting the daemon again\n");
    Ok(out)
}

/// The PostgreSQL schema the daemon opens `loaded`'s store in once `store.url` is a
/// PostgreSQL URL (as [`Loaded::store_options`] says it then): a directory account's own,
/// `None` (the URL's default) for the main `[account]`.
pub fn migrate_schema(loaded: &Loaded) -> Option<String> {
    match &loaded.namespace {
        crate::config::StoreNamespace::Account(key) => Some(store::account_schema(key)),
        crate::config::StoreNamespace::Main => None,
    }
}

/// One account's copy: progress on stderr; its count table and summary, or an error
/// holding the table if a count differs (the copy was then rolled back).
async fn migrate_account(src: &Path, to: &str, schema: Option<&str>) -> anyhow::Result<String> {
    use std::io::{IsTerminal as _, Write as _};
    let tty = std::io::stderr().is_terminal();
    let mut last_percent = None;
    let report = store::migrate::migrate(src, to, schema, |p| {
        let percent = (p.copied * 100).checked_div(p.total).unwrap_or(100);
        // On a terminal one line per table redrawn; in a log a line per 10 % and one at the end.
        if tty {
            eprint!("\rcopying {:<18} {percent:>3}% ({}/{} rows)", p.table, p.copied, p.total);
            if p.copied == p.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else if p.copied == p.total || (p.copied > 0 && last_percent.is_none_or(|l: u64| percent / 10 > l / 10)) {
            eprintln!("copying {}: {}/{} rows ({percent}%)", p.table, p.copied, p.total);
        }
        last_percent = (p.copied > 0).then_some(percent);
    })
    .await?;
    let mut rows = vec![["TABLE".to_owned(), "SQLITE".to_owned(), "POSTGRESQL".to_owned(), "".to_owned()]];
    for t in &report.tables {
        let ok = if t.sqlite == t.postgres { "ok" } else { "MISMATCH" };
        rows.push([t.table.to_owned(), t.sqlite.to_string(), t.postgres.to_string(), ok.to_owned()]);
    }
    let table = table(&rows);
    if !report.committed {
        let bad: Vec<&str> = report.mismatches().map(|t| t.table).collect();
        anyhow::bail!(
            "{table}the row counts differ in {}: the copy was rolled back, the PostgreSQL store is empty again",
            bad.join(", ")
        );
    }
    let total: u64 = report.tables.iter().map(|t| t.postgres).sum();
    Ok(format!(
        "{table}copied {total} rows of {} tables at schema version {} from {}; every count matches.\n",
        report.tables.len(),
        report.schema_version,
        src.display()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values_are_read_unfolded_and_printed_safely() {
        let head = b"Subject: hi\r\nFrom: \"Mallory\r\n <m@x.org>\r\nTo: b@x\r\n\r\nFrom: body@x\r\n";
        assert_eq!(super::header_value(head, "from").as_deref(), Some("\"Mallory <m@x.org>"));
        assert_eq!(super::header_value(b"To: b@x\r\n\r\nFrom: body@x\r\n", "from"), None);
        assert_eq!(super::printable("a\x1b[2Jb", 10), "a [2Jb");
        assert_eq!(super::printable("abcdef", 4), "abc…");
    }
}
