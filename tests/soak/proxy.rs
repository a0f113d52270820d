//! A TCP relay in front of the in-process Bot API double, so the double can go down like a server: its port refuses connections and every open one is cut, while its state (queued updates, what it received) lives on.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Listens on `port` and relays each connection to `target`, until stopped.
pub struct Relay {
    pub port: u16,
    target: u16,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying on a free port.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let mut r = Self { port, target, task: None };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        // The connections live in a JoinSet owned by the accept loop: aborting the loop
        // drops the set, which aborts (closes) every open connection.
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        conns.spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
    }

    /// The server goes away: the port refuses connections, open ones are reset.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Back on the same port.
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "the relay is running");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("soak: relay port {} not free yet ({e}); retrying", self.port);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("relay port {}: {e}", self.port),
            }
        };
        self.serve(listener);
    }
}
