//! The migration report (`coi-bridge migration`, `--html FILE`) from a store with a Telegram portal, its people, pairings and samples: the text names who moved; the HTML page, rendered by Debian's headless Chromium, shows the portal's name and counts in the screenshot (read back by tesseract) and refers to nothing on the network.

use std::path::Path;
use std::process::Command;

use coi_bridge::store::migration::{MigrationSample, PairedVia, PairingRow, Seen};
use coi_bridge::store::{ChatKind, ChatRef};

const GROUP: &str = "-1001234567890";
const DAY: i64 = 86_400;

/// Both tools, or why not: under CI=true a missing one fails the test.
fn tools() -> bool {
    let have = |bin: &str| {
        Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
    };
    if have("chromium") && have("tesseract") {
        return true;
    }
    let msg = "chromium or tesseract not installed: run `bash tests/servers/install.sh`";
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// A config whose store holds the portal "Book Club" with 5 Telegram members, 3 of them
/// seen: Ann moved (paired, in the COI group), Ben active and not moved, Cy quiet; and 4
/// samples.
async fn setup(dir: &Path) -> std::path::PathBuf {
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").expect("pw");
    std::fs::write(dir.join("tg-token"), "7000001:fake\n").expect("token");
    let config = dir.join("c.toml");
    let text = format!(
        "[account]\naddress = \"bridge@example.org\"\npassword_file = \"{}\"\n\n\
         [imap]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\n\n[smtp]\nhost = \"127.0.0.1\"\nsecurity = \"plain\"\n\n\
         [store]\nurl = \"sqlite://bridge.db\"\nstate_dir = \"{}\"\n\n\
         [[bridge]]\nid = \"telegram\"\nkind = \"telegram\"\ntoken_file = \"tg-token\"\nallowed_chats = [{GROUP}]\n",
        pw.display(),
        dir.display()
    );
    std::fs::write(&config, text).expect("config");
    let store = coi_bridge::store::open("sqlite://bridge.db", dir).await.expect("store");
    let group = ChatRef { kind: ChatKind::Group, key: "grp-1".into(), name: "Book Club".into() };
    let chat = store.ensure_chat(&group).await.expect("chat");
    store.update_members(chat, &["ann@example.org".into(), "zoe@example.org".into()], &[]).await.expect("members");
    store.create_portal(chat, "telegram", GROUP).await.expect("portal");
    let now = chrono::Utc::now().timestamp();
    for (user, name, seen, at) in [
        ("101", "Ann", Seen::Posted, now - DAY),
        ("102", "Ben", Seen::Posted, now - 2 * DAY),
        ("103", "Cy", Seen::Joined, now - 90 * DAY),
    ] {
        store.note_remote_person("telegram", GROUP, user, name, seen, at).await.expect("person");
    }
    let ann = PairingRow {
        bridge: "telegram".into(),
        remote_user: "101".into(),
        address: "ann@example.org".into(),
        via: PairedVia::Invite,
        paired_at: now - DAY,
    };
    store.pair(&ann).await.expect("pair");
    // Telegram counts 5 people in the group (the bot not counted); the bridge has seen 3.
    store.set_bridge_state("telegram", &format!("member_count:{GROUP}"), "5").await.expect("count");
    for (i, (remote, coi, moved)) in [(9, 1, 0), (8, 1, 0), (6, 2, 1), (3, 2, 1)].into_iter().enumerate() {
        let sample = MigrationSample {
            bridge: "telegram".into(),
            remote_chat: GROUP.into(),
            at: now - (4 - i as i64) * 7 * DAY,
            remote_members: remote,
            coi_members: coi,
            moved,
        };
        store.record_migration_sample(&sample).await.expect("sample");
    }
    config
}

fn run(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_coi-bridge"))
        .arg("migration")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_migration_report_reads_in_text_and_in_a_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = setup(dir.path()).await;

    let text = run(&config, &[]);
    assert!(text.contains(&format!("Book Club (Telegram {GROUP} on telegram)")), "{text}");
    assert!(text.contains("Moved to COI: 1 of the 5 members here: Ann (ann@example.org)."), "{text}");
    assert!(text.contains("Only on Telegram: Cy, Ben and 2 more people the bridge has not seen"), "{text}");
    assert!(text.contains("Active in the last 30 days and not moved yet: Ben."), "{text}");
    assert!(text.contains("On COI: 2 members."), "{text}");
    assert_eq!(run(&config, &["Book Club"]), text, "one portal by its COI chat's name");

    if !tools() {
        return;
    }
    let page = dir.path().join("report.html");
    let said = run(&config, &["--html", page.to_str().expect("utf-8 path")]);
    assert!(said.contains("1 portals"), "{said}");
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.contains("<polyline class=\"moved\""), "the chart is drawn from the samples");
    // Nothing the page refers to is on the network (the CSP would block it; a reader
    // offline would miss it).
    let lower = html.to_ascii_lowercase();
    for attr in ["src=", "href="] {
        for (at, _) in lower.match_indices(attr) {
            let value = lower[at + attr.len()..].trim_start_matches(['"', '\'']);
            assert!(
                !["http:", "https:", "//"].iter().any(|p| value.starts_with(p)),
                "a network URL in {}",
                &html[at..(at + 80).min(html.len())]
            );
        }
    }

    // Headless Chromium with nothing from the network, as a user opening the file.
    let shot = dir.path().join("report.png");
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let ocr = Command::new("tesseract").arg(&shot).arg("-").output().expect("run tesseract");
    let read = String::from_utf8_lossy(&ocr.stdout);
    assert!(read.contains("Book Club"), "the portal's name on screen: {read}");
    assert!(read.contains("1 of 5 moved"), "the counts on screen: {read}");
    assert!(read.contains("2 on COI"), "{read}");
    assert!(read.contains("1 active, not moved"), "{read}");
}
