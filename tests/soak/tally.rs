//! What each side really shows, read back after the run, and the figures: per side messages lost, duplicated and out of per-chat order, and per fault the time until traffic flows again.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

/// Where a message was written, or where it is read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Side {
    DeltaChat,
    Matrix,
    Telegram,
}

pub const SIDES: [Side; 3] = [Side::DeltaChat, Side::Matrix, Side::Telegram];

impl Side {
    pub fn letter(self) -> char {
        match self {
            Side::DeltaChat => 'd',
            Side::Matrix => 'm',
            Side::Telegram => 't',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::DeltaChat => "Delta Chat",
            Side::Matrix => "Matrix",
            Side::Telegram => "Telegram",
        }
    }

    fn from_letter(c: char) -> Option<Self> {
        SIDES.into_iter().find(|s| s.letter() == c)
    }
}

/// The unique tag every soak message carries: `soak-<origin letter>-<5-digit sequence>`.
pub fn tag_text(origin: Side, seq: u32) -> String {
    format!("soak-{}-{seq:05}", origin.letter())
}

/// The (origin, sequence) of the tag in `text`, wherever it sits (a name prefix or HTML
/// around it is fine).
pub fn parse_tag(text: &str) -> Option<(Side, u32)> {
    let rest = &text[text.find("soak-")? + 5..];
    let mut chars = rest.chars();
    let origin = Side::from_letter(chars.next()?)?;
    if chars.next()? != '-' {
        return None;
    }
    let digits: String = chars.take_while(char::is_ascii_digit).collect();
    Some((origin, digits.parse().ok()?))
}

/// One message as a receiving side shows it: its tag and when it arrived there (seconds
/// since the burst began).
#[derive(Clone, Copy, Debug)]
pub struct Shown {
    pub origin: Side,
    pub seq: u32,
    pub at: f64,
}

/// A fault: when it began, when the server (or the daemon) was back, and the paths
/// (origin → receiver) that needed it.
#[derive(Clone, Debug)]
pub struct Fault {
    pub name: String,
    pub down: f64,
    pub up: f64,
    pub paths: Vec<(Side, Side)>,
}

/// Every path from `a` to another side and from another side to `a`.
pub fn paths_touching(a: Side) -> Vec<(Side, Side)> {
    let mut out = Vec::new();
    for b in SIDES {
        if b != a {
            out.push((a, b));
            out.push((b, a));
        }
    }
    out
}

/// All six paths.
pub fn all_paths() -> Vec<(Side, Side)> {
    SIDES.iter().flat_map(|&a| SIDES.iter().filter(move |&&b| b != a).map(move |&b| (a, b))).collect()
}

/// Per receiving side and origin: lost, duplicated, reordered.
#[derive(Default, Debug, Clone, Copy)]
pub struct Counts {
    pub expected: usize,
    pub received: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
}

/// A path (origin → receiver) and its seconds from a fault's end to its first message.
pub type PathResume = ((Side, Side), Option<f64>);

/// A message shown out of order: its sequence, the later one shown before it, and when it
/// was shown (seconds into the run).
pub type Inversion = (u32, u32, f64);

/// The figures of a run.
pub struct Report {
    /// (receiver, origin) → counts.
    pub counts: BTreeMap<(Side, Side), Counts>,
    /// Messages shown back on the side that wrote them (counted as duplicates too).
    pub echoes: BTreeMap<Side, usize>,
    /// Per fault: per path the seconds from its return to the first message through.
    pub resumes: Vec<(Fault, Vec<PathResume>)>,
    /// (receiver, origin) → each message shown out of order: its sequence, the later one
    /// shown before it, and when it was shown (seconds into the run), to find the cause.
    pub inversions: BTreeMap<(Side, Side), Vec<Inversion>>,
}

impl Report {
    /// `sent`: per origin, the sequences that side accepted; `shown`: per receiver, what it
    /// shows, in its order.
    pub fn new(sent: &HashMap<Side, Vec<u32>>, shown: &HashMap<Side, Vec<Shown>>, faults: &[Fault]) -> Self {
        let mut counts = BTreeMap::new();
        let mut echoes = BTreeMap::new();
        let mut inversions = BTreeMap::new();
        for to in SIDES {
            let list = shown.get(&to).cloned().unwrap_or_default();
            let echo = list.iter().filter(|s| s.origin == to).count();
            echoes.insert(to, echo);
            for from in SIDES.into_iter().filter(|&f| f != to) {
                let expected: &[u32] = sent.get(&from).map_or(&[], Vec::as_slice);
                let from_list: Vec<&Shown> = list.iter().filter(|s| s.origin == from).collect();
                let got: Vec<u32> = from_list.iter().map(|s| s.seq).collect();
                let mut seen = HashSet::new();
                let mut firsts = Vec::new();
                for s in &from_list {
                    if seen.insert(s.seq) {
                        firsts.push(*s);
                    }
                }
                // Out of order: shown after a message that was written later.
                let mut max: Option<u32> = None;
                let mut reordered = 0;
                let mut these = Vec::new();
                for s in &firsts {
                    if let Some(m) = max.filter(|&m| s.seq < m) {
                        reordered += 1;
                        these.push((s.seq, m, s.at));
                    }
                    max = max.max(Some(s.seq));
                }
                inversions.insert((to, from), these);
                let lost = expected.iter().filter(|q| !seen.contains(q)).count();
                counts.insert(
                    (to, from),
                    Counts {
                        expected: expected.len(),
                        received: got.len(),
                        lost,
                        duplicated: got.len() - firsts.len(),
                        reordered,
                    },
                );
            }
        }
        let resumes = faults
            .iter()
            .map(|f| {
                let per_path = f
                    .paths
                    .iter()
                    .map(|&(from, to)| {
                        let first = shown
                            .get(&to)
                            .into_iter()
                            .flatten()
                            .filter(|s| s.origin == from && s.at > f.up)
                            .map(|s| s.at)
                            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
                        ((from, to), first.map(|t| t - f.up))
                    })
                    .collect();
                (f.clone(), per_path)
            })
            .collect();
        Self { counts, echoes, resumes, inversions }
    }

    /// Lost, duplicated (echoes included) and reordered over all paths into `to`.
    pub fn side_totals(&self, to: Side) -> (usize, usize, usize, usize, usize) {
        let mut t = (0, 0, 0, 0, 0);
        for ((r, _), c) in &self.counts {
            if *r == to {
                t.0 += c.expected;
                t.1 += c.received;
                t.2 += c.lost;
                t.3 += c.duplicated;
                t.4 += c.reordered;
            }
        }
        t.3 += self.echoes.get(&to).copied().unwrap_or(0);
        t
    }

    /// The slowest path's resume time of a fault (None: some path never flowed again).
    pub fn resume_of(per_path: &[PathResume]) -> Option<(f64, (Side, Side))> {
        let mut worst: Option<(f64, (Side, Side))> = None;
        for &(p, r) in per_path {
            let r = r?;
            if worst.is_none_or(|(w, _)| r > w) {
                worst = Some((r, p));
            }
        }
        worst
    }

    /// True when every side shows 0 lost and 0 duplicated, the bridge put nothing out of
    /// order (`reordered_by_bridge`: mail transport may reorder before and after it), and
    /// every fault resumed within `goal` seconds.
    pub fn goals_met(&self, goal: f64, reordered_by_bridge: usize) -> bool {
        reordered_by_bridge == 0
            && SIDES.iter().all(|&s| {
                let (_, _, l, d, _) = self.side_totals(s);
                (l, d) == (0, 0)
            })
            && self.resumes.iter().all(|(_, p)| p.is_empty() || Self::resume_of(p).is_some_and(|(r, _)| r <= goal))
    }

    pub fn markdown(&self, goal: f64) -> String {
        let mut out = String::from(
            "| receiving side | expected | received | lost | duplicated | reordered |\n|---|---|---|---|---|---|\n",
        );
        for s in SIDES {
            let (e, r, l, d, o) = self.side_totals(s);
            out.push_str(&format!("| {} | {e} | {r} | {l} | {d} | {o} |\n", s.name()));
        }
        out.push_str("\nPer path (origin → receiver): ");
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|((to, from), c)| {
                format!(
                    "{}→{} {}/{} (lost {}, dup {}, reordered {})",
                    from.letter(),
                    to.letter(),
                    c.received,
                    c.expected,
                    c.lost,
                    c.duplicated,
                    c.reordered
                )
            })
            .collect();
        out.push_str(&parts.join("; "));
        out.push_str(&format!(
            "; echoed back to their own side: {}.\n\n",
            SIDES.iter().map(|s| format!("{} {}", s.letter(), self.echoes[s])).collect::<Vec<_>>().join(", ")
        ));
        out.push_str(
            "| fault | down at s | back at s | resume s (slowest path) | per path s |\n|---|---|---|---|---|\n",
        );
        for (f, per_path) in &self.resumes {
            let worst = match Self::resume_of(per_path) {
                _ if per_path.is_empty() => "— (every path it needs was down)".to_owned(),
                Some((r, (a, b))) => {
                    format!("{r:.1} ({}→{}){}", a.letter(), b.letter(), if r > goal { " ✗" } else { "" })
                }
                None => "never ✗".into(),
            };
            let each: Vec<String> = per_path
                .iter()
                .map(|((a, b), r)| {
                    format!("{}→{} {}", a.letter(), b.letter(), r.map_or("never".into(), |r| format!("{r:.1}")))
                })
                .collect();
            out.push_str(&format!("| {} | {:.1} | {:.1} | {worst} | {} |\n", f.name, f.down, f.up, each.join(", ")));
        }
        out
    }

    pub fn json(&self) -> Value {
        let sides: Vec<Value> = SIDES
            .iter()
            .map(|&s| {
                let (e, r, l, d, o) = self.side_totals(s);
                json!({"side": s.name(), "expected": e, "received": r, "lost": l, "duplicated": d, "reordered": o})
            })
            .collect();
        let faults: Vec<Value> = self
            .resumes
            .iter()
            .map(|(f, p)| {
                json!({
                    "fault": f.name, "down": f.down, "up": f.up,
                    "resume": Self::resume_of(p).map(|(r, _)| r),
                    "paths": p.iter().map(|((a, b), r)| json!({"path": format!("{}{}", a.letter(), b.letter()), "resume": r})).collect::<Vec<_>>(),
                })
            })
            .collect();
        // Every path's out-of-order messages: [sequence, the later one shown before it, at s].
        let inversions: serde_json::Map<String, Value> = self
            .inversions
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|((to, from), v)| (format!("{}{}", from.letter(), to.letter()), json!(v)))
            .collect();
        json!({"sides": sides, "faults": faults, "inversions": inversions})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_inside_prefixes() {
        assert_eq!(parse_tag("<b>Alice</b>: soak-d-00042"), Some((Side::DeltaChat, 42)));
        assert_eq!(parse_tag("Tom (Telegram): soak-t-01999"), Some((Side::Telegram, 1999)));
        assert_eq!(parse_tag("soak-x-1"), None);
        assert_eq!(parse_tag(&tag_text(Side::Matrix, 7)), Some((Side::Matrix, 7)));
    }

    #[test]
    fn lost_duplicated_and_reordered_are_counted_apart() {
        let sent = HashMap::from([(Side::DeltaChat, vec![1, 2, 3, 4, 5])]);
        let at = |seq| Shown { origin: Side::DeltaChat, seq, at: 1.0 };
        let shown = HashMap::from([(Side::Matrix, vec![at(1), at(3), at(2), at(3), at(5)])]);
        let r = Report::new(&sent, &shown, &[]);
        let c = r.counts[&(Side::Matrix, Side::DeltaChat)];
        assert_eq!((c.lost, c.duplicated, c.reordered), (1, 1, 1));
    }
}
