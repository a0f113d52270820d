//! The migration report: per portal, who has moved to COI, who has not, and both sides over time; as text for `coi-bridge migration` and as one self-contained HTML page (inline CSS and SVG, nothing from the network) for `--html FILE`.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::hub::migration::{self, Named, PortalStatus};
use crate::store::Store;
use crate::store::migration::{MigrationSample, PairingRow};

/// One portal's part of the report.
#[derive(Clone, Debug)]
pub struct PortalReport {
    pub bridge: String,
    /// The network's name ("Telegram").
    pub label: String,
    pub remote_chat: String,
    /// The COI chat's name (a 1:1 chat's address).
    pub chat_name: String,
    pub status: PortalStatus,
    /// The bridge's pairings, for when each person moved.
    pub pairings: Vec<PairingRow>,
    pub samples: Vec<MigrationSample>,
}

/// Every portal's report, or only the ones `only` names (a remote chat id, or a COI
/// chat's name).
pub async fn gather(
    store: &dyn Store,
    labels: &HashMap<String, String>,
    only: Option<&str>,
) -> anyhow::Result<Vec<PortalReport>> {
    let mut out = Vec::new();
    for portal in store.portals().await? {
        let Some(chat) = store.chat(portal.chat_id).await? else { continue };
        if crate::hub::private::is_private_chat(store, &portal, &chat).await? {
            continue; // a private chat with the bot, not a group that moves
        }
        let name = if chat.name.is_empty() { chat.key.clone() } else { chat.name.clone() };
        if only.is_some_and(|o| o != portal.remote_chat && o != name) {
            continue;
        }
        let status = migration::portal_status(store, &portal, &chat).await?;
        out.push(PortalReport {
            label: labels.get(&portal.bridge).cloned().unwrap_or_else(|| portal.bridge.clone()),
            pairings: store.pairings(&portal.bridge).await?,
            samples: store.migration_samples(&portal.bridge, &portal.remote_chat).await?,
            bridge: portal.bridge,
            remote_chat: portal.remote_chat,
            chat_name: name,
            status,
        });
    }
    if out.is_empty()
        && let Some(o) = only
    {
        anyhow::bail!("no portal {o:?}: give a remote chat id or a COI chat name that `coi-bridge portals` lists");
    }
    Ok(out)
}

/// The report as text, one block per portal.
pub fn text(reports: &[PortalReport]) -> String {
    if reports.is_empty() {
        return "no portals yet: say `!coi bridge` in a Matrix room or `/coi_bridge` in a Telegram group\n".into();
    }
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(out, "{} ({} {} on {})", r.chat_name, r.label, r.remote_chat, r.bridge);
        for line in r.status.render(&r.label).lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  On COI: {} members.", r.status.coi_members);
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn day(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

/// A list of people, with when each moved where it is known.
fn people(list: &[Named], pairings: &[PairingRow]) -> String {
    if list.is_empty() {
        return "<p class=\"none\">nobody</p>".into();
    }
    let mut out = String::from("<ul>");
    for n in list {
        let when = pairings.iter().find(|p| p.remote_user == n.remote_user).map(|p| day(p.paired_at));
        let _ = write!(out, "<li>{}", esc(&n.name));
        if let Some(a) = &n.address {
            let _ = write!(out, " <span class=\"addr\">{}</span>", esc(a));
        }
        if let (Some(w), Some(_)) = (when, &n.address) {
            let _ = write!(out, " <span class=\"when\">moved {w}</span>");
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    out
}

/// Members on each side over time, as an inline SVG line chart.
fn chart(samples: &[MigrationSample], label: &str) -> String {
    const W: f64 = 640.0;
    const H: f64 = 220.0;
    const PAD: f64 = 36.0;
    if samples.len() < 2 {
        return "<p class=\"none\">The chart needs two samples (the daemon takes one an hour and at every move).</p>"
            .into();
    }
    let (t0, t1) = (samples[0].at, samples[samples.len() - 1].at.max(samples[0].at + 1));
    let top = samples.iter().map(|s| s.remote_members.max(s.coi_members)).max().unwrap_or(1).max(1);
    let x = |t: i64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (W - 2.0 * PAD);
    let y = |v: i64| H - PAD - v as f64 / top as f64 * (H - 2.0 * PAD);
    let line = |f: &dyn Fn(&MigrationSample) -> i64| {
        samples.iter().map(|s| format!("{:.1},{:.1}", x(s.at), y(f(s)))).collect::<Vec<_>>().join(" ")
    };
    let mut svg = format!(
        "<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"members over time\">\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" class=\"axis\"/>\
         <text x=\"4\" y=\"{ty}\" class=\"tick\">{top}</text><text x=\"4\" y=\"{b}\" class=\"tick\">0</text>\
         <text x=\"{PAD}\" y=\"{bl}\" class=\"tick\">{d0}</text><text x=\"{r}\" y=\"{bl}\" class=\"tick\" text-anchor=\"end\">{d1}</text>",
        b = H - PAD,
        r = W - PAD,
        ty = PAD + 4.0,
        bl = H - PAD + 16.0,
        d0 = day(t0),
        d1 = day(t1),
    );
    for (class, points) in
        [("remote", line(&|s| s.remote_members)), ("coi", line(&|s| s.coi_members)), ("moved", line(&|s| s.moved))]
    {
        let _ = write!(svg, "<polyline class=\"{class}\" points=\"{points}\"/>");
    }
    svg.push_str("</svg>");
    let _ = write!(
        svg,
        "<p class=\"legend\"><span class=\"remote\">&#9632; on {}</span> <span class=\"coi\">&#9632; on COI</span> \
         <span class=\"moved\">&#9632; moved</span></p>",
        esc(label)
    );
    svg
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:60em}\
h1{font-size:1.6em}section{border-top:2px solid #ccc;padding-top:1em;margin-top:1.5em}\
h2{font-size:2.2em;margin:.2em 0}.counts{font-size:1.6em;font-weight:bold}.sub{color:#555}\
.closable{background:#e6f4ea;padding:.5em;font-weight:bold}.none{color:#777}.addr,.when{color:#555;font-size:.9em}\
.axis{stroke:#888}.tick{font-size:11px;fill:#555}polyline{fill:none;stroke-width:3}\
polyline.remote{stroke:#2a7bd5}polyline.coi{stroke:#e0701b}polyline.moved{stroke:#2a9d4b}\
.legend .remote{color:#2a7bd5}.legend .coi{color:#e0701b}.legend .moved{color:#2a9d4b}";

/// The report as one HTML page, written at `now` (unix seconds).
pub fn html(reports: &[PortalReport], now: i64) -> String {
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>coi-bridge migration report</title><style>{STYLE}</style></head><body>\
         <h1>Who has moved to COI</h1><p class=\"sub\">coi-bridge migration report, {}</p>",
        day(now)
    );
    if reports.is_empty() {
        out.push_str("<p class=\"none\">No portals yet.</p>");
    }
    for r in reports {
        let s = &r.status;
        let _ = write!(
            out,
            "<section><h2>{}</h2><p class=\"sub\">{} chat {} (bridge {})</p>\
             <p class=\"counts\">{} of {} moved &middot; {} on COI &middot; {} active, not moved</p>",
            esc(&r.chat_name),
            esc(&r.label),
            esc(&r.remote_chat),
            esc(&r.bridge),
            s.moved.len(),
            s.remote_members(),
            s.coi_members,
            s.active_not_moved.len(),
        );
        if s.closable {
            let _ = write!(
                out,
                "<p class=\"closable\">Everyone active in the last {} days is also on COI: this {} group can be closed.</p>",
                migration::ACTIVE_DAYS,
                esc(&r.label)
            );
        }
        let _ = write!(out, "<h3>Moved</h3>{}", people(&s.moved, &r.pairings));
        let _ = write!(
            out,
            "<h3>Active in the last {} days, not moved</h3>{}",
            migration::ACTIVE_DAYS,
            people(&s.active_not_moved, &r.pairings)
        );
        // The unseen are counted by the network; the bridge cannot name them.
        let only = match (s.only_remote.is_empty(), s.unseen()) {
            (_, 0) => people(&s.only_remote, &r.pairings),
            (true, n) => format!("<p>{n} the bridge has not seen join or post</p>"),
            (false, n) => format!(
                "{}<p class=\"sub\">and {n} more the bridge has not seen join or post</p>",
                people(&s.only_remote, &r.pairings)
            ),
        };
        let _ = write!(out, "<h3>Only on {}</h3>{only}", esc(&r.label));
        let _ =
            write!(out, "<h3>Left {} since moving</h3>{}", esc(&r.label), people(&s.left_since_moving, &r.pairings));
        let _ = write!(out, "<h3>Members over time</h3>{}</section>", chart(&r.samples, &r.label));
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str) -> PortalReport {
        let named = |n: &str, a: Option<&str>| Named {
            remote_user: n.to_lowercase(),
            name: n.into(),
            address: a.map(Into::into),
        };
        PortalReport {
            bridge: "telegram".into(),
            label: "Telegram".into(),
            remote_chat: "-100".into(),
            chat_name: name.into(),
            status: PortalStatus {
                moved: vec![named("Ann", Some("ann@x"))],
                only_remote: vec![named("Bob", None)],
                active_not_moved: vec![named("Bob", None)],
                remote_seen: 2,
                coi_members: 3,
                ..PortalStatus::default()
            },
            pairings: Vec::new(),
            samples: (0..3)
                .map(|i| MigrationSample {
                    bridge: "telegram".into(),
                    remote_chat: "-100".into(),
                    at: 1_800_000_000 + i * 3600,
                    remote_members: 5 - i,
                    coi_members: 1 + i,
                    moved: i,
                })
                .collect(),
        }
    }

    #[test]
    fn the_page_names_the_portal_and_counts_and_escapes_what_people_chose() {
        let page = html(&[report("Book <Club> & \"friends\"")], 1_800_000_000);
        assert!(page.contains("<h2>Book &lt;Club&gt; &amp; &quot;friends&quot;</h2>"), "{page}");
        assert!(page.contains("1 of 2 moved &middot; 3 on COI &middot; 1 active, not moved"));
        assert!(page.contains("<polyline class=\"remote\""), "a chart from three samples");
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="), "nothing loaded");
    }

    #[test]
    fn a_counted_remote_side_is_the_total_and_the_unseen_are_counted() {
        let mut r = report("Book Club");
        r.status.remote_count = Some(4);
        let page = html(std::slice::from_ref(&r), 1_800_000_000);
        assert!(page.contains("1 of 4 moved &middot; 3 on COI"), "{page}");
        assert!(page.contains("<li>Bob</li></ul><p class=\"sub\">and 2 more the bridge has not seen join or post</p>"));
        r.status.only_remote.clear();
        let page = html(&[r], 1_800_000_000);
        assert!(page.contains("<h3>Only on Telegram</h3><p>2 the bridge has not seen join or post</p>"), "{page}");
    }

    #[test]
    fn the_text_has_one_block_per_portal() {
        let t = text(&[report("Book Club"), report("Chess")]);
        assert!(t.contains("Book Club (Telegram -100 on telegram)") && t.contains("Chess (Telegram"), "{t}");
        assert!(t.contains("  Moved to COI: 1 of the 2 people seen here: Ann (ann@x)."), "{t}");
    }
}
