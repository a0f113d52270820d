//! A TCP forwarder, as a load balancer in front of several daemons does it: each connection goes to the first target that accepts one (daemon A, and when A refuses, daemon B).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// Listens on 127.0.0.1:`port` until dropped; its own thread and runtime, so it forwards
/// whatever the test is blocked on.
pub struct Forwarder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where each connection went, in order (the target's port).
    pub log: Arc<Mutex<Vec<u16>>>,
}

impl Forwarder {
    /// Forwards connections to `port` to the first of `targets` (ports on 127.0.0.1) that
    /// accepts; a connection none accepts is closed at once.
    pub fn start(port: u16, targets: Vec<u16>) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the forwarder's port");
        listener.set_nonblocking(true).expect("nonblocking");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let thread = std::thread::Builder::new()
            .name("tcp-forwarder".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => return,
                            accepted = listener.accept() => {
                                let Ok((client, _)) = accepted else { continue };
                                let (targets, seen) = (targets.clone(), seen.clone());
                                tokio::spawn(async move { forward(client, &targets, &seen).await });
                            }
                        }
                    }
                });
            })
            .expect("spawn the forwarder");
        Self { stop: Some(tx), thread: Some(thread), log }
    }
}

async fn forward(mut client: TcpStream, targets: &[u16], seen: &Mutex<Vec<u16>>) {
    for &port in targets {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if let Ok(mut upstream) = TcpStream::connect(addr).await {
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(port);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            return;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
