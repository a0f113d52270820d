//! The order Delta Chat's mail reached the bridge's mailbox in (read from Postfix's log), so that reordering by the mail transport is told apart from the bridge's own.

use std::collections::{HashMap, HashSet};

/// The queue id just before `marker` on a Postfix log line (`… postfix/lmtp[9]: 4Fq2: to=<…>`).
fn queue_id<'a>(line: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let p = line.find(marker)?;
    let qid = line[..p].rsplit(' ').next()?;
    Some((qid, &line[p + marker.len()..]))
}

fn bare(mid: &str) -> String {
    mid.trim().trim_start_matches('<').split('>').next().unwrap_or_default().to_owned()
}

/// The Message-IDs Postfix delivered to `rcpt`, in delivery order (each once).
pub fn delivery_order(postfix_log: &str, rcpt: &str) -> Vec<String> {
    let mut mid_of: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let to = format!(": to=<{rcpt}>");
    for line in postfix_log.lines() {
        if let Some((qid, rest)) = queue_id(line, ": message-id=") {
            mid_of.insert(qid, bare(rest));
        } else if line.contains("status=sent")
            && let Some((qid, _)) = queue_id(line, &to)
            && let Some(mid) = mid_of.get(qid)
            && seen.insert(mid.clone())
        {
            out.push(mid.clone());
        }
    }
    out
}

/// The Message-IDs in the order Postfix took them in (its `cleanup` logs each mail as it
/// enters the queue, before any delivery): the order a sender handed its mail over in.
pub fn submission_order(postfix_log: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    postfix_log
        .lines()
        .filter(|l| l.contains("postfix/cleanup["))
        .filter_map(|l| queue_id(l, ": message-id=").map(|(_, rest)| bare(rest)))
        .filter(|m| seen.insert(m.clone()))
        .collect()
}

/// The Message-ID in Delta Chat's message info text (`get_message_info`).
pub fn message_id_in_info(info: &str) -> Option<String> {
    info.lines().find_map(|l| l.trim().strip_prefix("Message-ID:").map(bare))
}

/// How many of `order` come after a higher one (the soak's "reordered").
pub fn reordered(order: impl IntoIterator<Item = usize>) -> usize {
    let mut max = None;
    let mut n = 0;
    for x in order {
        if max.is_some_and(|m| x < m) {
            n += 1;
        }
        max = max.max(Some(x));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_delivery_order_from_the_log() {
        let log = "Nov 30 04:25:01 mail postfix/cleanup[7]: 4AB: message-id=<one@x>\n\
                   Nov 30 04:25:01 mail postfix/cleanup[7]: 4CD: message-id=<two@x>\n\
                   Nov 30 04:25:02 mail postfix/lmtp[8]: 4CD: to=<bridge@example.org>, relay=l, status=sent (250)\n\
                   Nov 30 04:25:02 mail postfix/lmtp[8]: 4AB: to=<bridge@example.org>, relay=l, status=deferred (x)\n\
                   Nov 30 04:25:03 mail postfix/lmtp[8]: 4AB: to=<bridge@example.org>, relay=l, status=sent (250)\n";
        assert_eq!(delivery_order(log, "bridge@example.org"), ["two@x", "one@x"]);
        assert_eq!(submission_order(log), ["one@x", "two@x"]);
        assert_eq!(message_id_in_info("Sent: x\nMessage-ID: <one@x>\n"), Some("one@x".into()));
        assert_eq!(reordered([1, 3, 2, 4, 0]), 2);
    }
}
