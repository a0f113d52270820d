//! An idle SMTP worker sleeps until something is due: a mail queued in this process wakes it, and a retry after a 4xx goes when it comes due, with no poll in between.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::coi::ChatMessage;
use crate::store::sqlite::SqliteStore;
use crate::store::{ChatKind, ChatRef, Envelope, Origin, OutboundMail};

/// A minimal SMTP server that answers the first mail's DATA with a 451 and accepts the
/// rest, keeping each accepted one's body.
async fn busy_once_smtp(listener: TcpListener, got: Arc<Mutex<Vec<String>>>) {
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let Ok((sock, _)) = listener.accept().await else { return };
        let (got, refused) = (got.clone(), refused.clone());
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            let _ = w.write_all(b"220 fake ESMTP\r\n").await;
            let (mut data, mut body) = (false, String::new());
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = if data {
                    if line == "." {
                        data = false;
                        if refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            got.lock().expect("lock").push(std::mem::take(&mut body));
                            b"250 queued\r\n"
                        } else {
                            body.clear();
                            b"451 busy, try again later\r\n"
                        }
                    } else {
                        body.push_str(&line);
                        body.push('\n');
                        continue;
                    }
                } else if line.eq_ignore_ascii_case("DATA") {
                    data = true;
                    b"354 go on\r\n"
                } else if line.eq_ignore_ascii_case("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn mail(mid: &str, body: &str) -> OutboundMail {
    OutboundMail {
        chat: ChatRef { kind: ChatKind::Group, key: "grp_abcdefghij".into(), name: "Room".into() },
        message: ChatMessage { message_id: mid.into(), text: body.into(), ..ChatMessage::default() },
        raw: format!("Subject: hi\r\nMessage-ID: <{mid}>\r\n\r\n{body}\r\n").into_bytes(),
        envelope: Envelope { from: "bridge@x.org".into(), to: vec!["alice@x.org".into()] },
        also: None,
        origin: Origin::Local,
        targets: vec![],
    }
}

#[tokio::test]
async fn a_mail_queued_while_the_worker_sleeps_and_its_retry_coming_due_go_without_a_poll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.expect("store"));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let wake = OutboxNotifier::new();
    // A 4xx is retried 2 s later; the safety poll is an hour: what goes below was not found by it.
    let policy = RetryPolicy { base: Duration::from_secs(2), max_delay: Duration::from_secs(2), max_attempts: 5 };
    let worker = SmtpWorker::new(
        Transport::plain("127.0.0.1", port),
        store.clone(),
        policy,
        wake.clone(),
        Arc::new(|_| {}),
        Arc::new(Metrics::new()),
    )
    .with_safety_poll(Duration::from_secs(3600));
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let token = CancellationToken::new();
    let feed = {
        let (store, got, token) = (store.clone(), got.clone(), token.clone());
        async move {
            // The worker found nothing and sleeps; a mail is queued as the hub queues it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.queue_outbound(&mail("first@x.org", "first")).await.expect("queue");
            wake.queued([SMTP_TARGET]);
            // Refused with a 451 at once, then sent when its retry comes due.
            while got.lock().expect("lock").is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            store.queue_outbound(&mail("second@x.org", "second")).await.expect("queue");
            wake.queued([SMTP_TARGET]);
            while got.lock().expect("lock").len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            token.cancel();
        }
    };
    let run = async {
        tokio::select! {
            () = busy_once_smtp(listener, got.clone()) => {}
            _ = futures::future::join(worker.run(token.clone()), feed) => {}
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(60), run).await;
    let got = got.lock().expect("lock").clone();
    assert!(done.is_ok(), "sent {} of 2: the worker waited for its poll", got.len());
    assert!(got[0].contains("first") && got[1].contains("second"), "{got:?}");
    let state = store.outbox_state(SMTP_TARGET, "first@x.org").await.expect("state");
    assert_eq!(state, Some(crate::store::OutboxState::Done), "sent on its second attempt");
}
