//! Mail waiting for an SMTP server that did not answer goes as soon as the server answers again, not when the backoff grown over the outage runs out.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::coi::ChatMessage;
use crate::store::sqlite::SqliteStore;
use crate::store::{ChatKind, ChatRef, Envelope, Origin, OutboundMail};

/// A minimal SMTP server that accepts every mail and keeps each one's DATA.
async fn fake_smtp(listener: TcpListener, got: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { return };
        let got = got.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            let _ = w.write_all(b"220 fake ESMTP\r\n").await;
            let (mut data, mut body) = (false, String::new());
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = if data {
                    if line == "." {
                        data = false;
                        got.lock().expect("lock").push(std::mem::take(&mut body));
                        b"250 queued\r\n"
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

/// A store holding one mail for alice@x.org (Message-ID `mid`, body `body`), and a free
/// port where no SMTP server listens yet.
async fn one_queued_mail(mid: &str, body: &str) -> (tempfile::TempDir, Arc<dyn Store>, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.expect("store"));
    let chat = ChatRef { kind: ChatKind::Group, key: "grp_abcdefghij".into(), name: "Room".into() };
    store.ensure_chat(&chat).await.expect("chat");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    store
        .queue_outbound(&OutboundMail {
            chat,
            message: ChatMessage { message_id: mid.into(), text: body.into(), ..ChatMessage::default() },
            raw: format!("Subject: hi\r\nMessage-ID: <{mid}>\r\n\r\n{body}\r\n").into_bytes(),
            envelope: Envelope { from: "bridge@x.org".into(), to: vec!["alice@x.org".into()] },
            also: None,
            origin: Origin::Local,
            targets: vec![],
        })
        .await
        .expect("queue");
    (dir, store, port)
}

#[tokio::test]
async fn mail_for_an_unreachable_server_goes_once_it_answers() {
    let (_dir, store, port) = one_queued_mail("waits@x.org", "hello").await;
    // Nothing listens yet; after the first failure the next attempt is an hour away.
    let transport = Transport::plain("127.0.0.1", port);
    let policy =
        RetryPolicy { base: Duration::from_secs(3600), max_delay: Duration::from_secs(3600), max_attempts: 30 };
    let worker = SmtpWorker::new(
        transport,
        store.clone(),
        policy,
        OutboxNotifier::new(),
        Arc::new(|_| {}),
        Arc::new(Metrics::new()),
    );
    let token = CancellationToken::new();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = {
        let got = got.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("the server comes back");
            fake_smtp(listener, got).await;
        }
    };
    let sent = {
        let (got, token) = (got.clone(), token.clone());
        async move {
            while got.lock().expect("lock").is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            token.cancel();
        }
    };
    let run = async {
        tokio::select! {
            () = server => {}
            _ = futures::future::join(worker.run(token.clone()), sent) => {}
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), run).await.is_ok(),
        "the mail still waits for the hour-long backoff after the server came back"
    );
    assert!(got.lock().expect("lock")[0].contains("hello"));
}

#[tokio::test]
async fn a_restarted_worker_sends_mail_left_in_a_long_backoff_as_soon_as_the_server_answers() {
    let (_dir, store, port) = one_queued_mail("left@x.org", "left behind").await;
    let policy =
        RetryPolicy { base: Duration::from_secs(3600), max_delay: Duration::from_secs(3600), max_attempts: 30 };
    let worker = || {
        SmtpWorker::new(
            Transport::plain("127.0.0.1", port),
            store.clone(),
            policy,
            OutboxNotifier::new(),
            Arc::new(|_| {}),
            Arc::new(Metrics::new()),
        )
    };
    // The process before the crash: nothing answers, the mail's next attempt is an hour away.
    let first = CancellationToken::new();
    let stop = {
        let (store, first) = (store.clone(), first.clone());
        async move {
            while store.due_outbox(SMTP_TARGET, i64::MAX, 8).await.expect("read").iter().all(|r| r.attempts == 0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            first.cancel();
        }
    };
    let crashed = worker();
    futures::future::join(crashed.run(first.clone()), stop).await;
    // The new process starts; the server answers again.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("the server comes back");
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let token = CancellationToken::new();
    let sent = {
        let (got, token) = (got.clone(), token.clone());
        async move {
            while got.lock().expect("lock").is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            token.cancel();
        }
    };
    let restarted = worker();
    let run = async {
        tokio::select! {
            () = fake_smtp(listener, got.clone()) => {}
            _ = futures::future::join(restarted.run(token.clone()), sent) => {}
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), run).await.is_ok(),
        "the restarted worker waits out the backoff the crashed one left"
    );
    assert!(got.lock().expect("lock")[0].contains("left behind"));
}
