//! The kept SMTP connection: one connection for many mails, a replaced dead one, Nagle off, QUIT when idle.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

use super::*;

/// What the fake server saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    mails: usize,
    quits: usize,
}

/// A minimal SMTP server accepting every mail; with `close_after_mail` it hangs up after
/// each mail without a word, as a server that dropped an idle client would.
async fn fake_smtp(close_after_mail: bool) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let counted = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            counted.lock().expect("lock").connections += 1;
            let seen = counted.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 fake ESMTP\r\n").await;
                let mut data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if data {
                        if line != "." {
                            continue;
                        }
                        data = false;
                        seen.lock().expect("lock").mails += 1;
                        if close_after_mail {
                            let _ = w.write_all(b"250 queued\r\n").await;
                            return;
                        }
                        b"250 queued\r\n"
                    } else if line.eq_ignore_ascii_case("DATA") {
                        data = true;
                        b"354 go on\r\n"
                    } else if line.eq_ignore_ascii_case("QUIT") {
                        seen.lock().expect("lock").quits += 1;
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else if line.to_ascii_uppercase().starts_with("EHLO") {
                        b"250-fake\r\n250 8BITMIME\r\n"
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

fn envelope() -> Envelope {
    Envelope::new(Some("bridge@x.org".parse().expect("from")), vec!["alice@x.org".parse().expect("to")])
        .expect("envelope")
}

fn mail(n: usize) -> Vec<u8> {
    format!("Subject: {n}\r\nMessage-ID: <{n}@x.org>\r\n\r\nbody {n}\r\n").into_bytes()
}

#[tokio::test]
async fn mails_in_a_row_share_one_connection() {
    let (port, seen) = fake_smtp(false).await;
    let client = Client::plain("127.0.0.1", port);
    for n in 0..5 {
        client.send_raw(&envelope(), &mail(n)).await.expect("sent");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.mails, 5);
    assert_eq!(seen.connections, 1, "one connect, greeting and EHLO for five mails");
    assert_eq!(client.opened(), 1);
}

#[tokio::test]
async fn a_kept_connection_the_server_closed_is_replaced_without_an_error() {
    let (port, seen) = fake_smtp(true).await;
    let client = Client::plain("127.0.0.1", port);
    for n in 0..3 {
        client.send_raw(&envelope(), &mail(n)).await.expect("sent on a new connection, not an error");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.mails, 3, "each mail once");
    assert_eq!(seen.connections, 3);
}

#[tokio::test]
async fn connections_unused_for_a_while_are_closed_with_quit() {
    let (port, seen) = fake_smtp(false).await;
    let client = Client::plain("127.0.0.1", port);
    client.send_raw(&envelope(), &mail(1)).await.expect("sent");
    assert!(client.keeps_any(), "kept after the mail");
    assert!(client.close_idle(IDLE_CLOSE).await, "not yet unused for IDLE_CLOSE");
    assert!(!client.close_idle(Duration::ZERO).await, "closed");
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.lock().expect("lock").quits == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server got QUIT");
}

#[tokio::test]
async fn the_socket_has_nagle_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tcp = socket("127.0.0.1", port).await.expect("connect");
    assert!(tcp.nodelay().expect("nodelay"), "TCP_NODELAY is set");
}

#[tokio::test]
async fn no_server_is_no_reply_not_a_refusal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let client = Client::plain("127.0.0.1", port);
    let e = client.send_raw(&envelope(), &mail(1)).await.expect_err("nothing listens");
    assert!(!e.is_permanent() && !e.is_transient(), "{e}");
    assert!(e.to_string().contains("no answer"), "{e}");
}
