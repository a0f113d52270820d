//! A real Delta Chat core (`deltachat-rpc-server` from PyPI) driven over raw JSON-RPC on stdio, with accounts on the test mail server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, oneshot};

use super::MailServer;

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The server binary: `COI_TEST_DC_RPC`, else the venv `tests/servers/install.sh` makes.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("COI_TEST_DC_RPC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dc-venv/bin/deltachat-rpc-server"));
    if path.is_file() {
        return Some(path);
    }
    let msg = format!("{} missing: run `bash tests/servers/install.sh`", path.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The request side, shared with the event pump.
struct Rpc {
    stdin: Mutex<ChildStdin>,
    pending: Pending,
    next_id: AtomicU64,
}

impl Rpc {
    async fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("lock").insert(id, tx);
        let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| json!(e.to_string()))?;
            stdin.flush().await.map_err(|e| json!(e.to_string()))?;
        }
        let msg = rx.await.map_err(|_| json!("rpc server gone"))?;
        match msg.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
        }
    }
}

/// One `deltachat-rpc-server` process with its accounts dir.
pub struct DeltaChat {
    child: Child,
    rpc: Arc<Rpc>,
    events: Arc<std::sync::Mutex<Vec<Value>>>,
    new_event: Arc<tokio::sync::Notify>,
    dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DeltaChat {
    pub async fn start() -> Option<Self> {
        let bin = binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(bin)
            .env("DC_ACCOUNTS_PATH", dir.path().join("accounts"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("rpc.log")).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn deltachat-rpc-server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
                let Some(id) = msg.get("id").and_then(Value::as_u64) else { continue };
                if let Some(tx) = p.lock().expect("lock").remove(&id) {
                    let _ = tx.send(msg);
                }
            }
        });
        let rpc = Arc::new(Rpc { stdin: Mutex::new(stdin), pending, next_id: AtomicU64::new(1) });
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let new_event = Arc::new(tokio::sync::Notify::new());
        let (r, e, n) = (rpc.clone(), events.clone(), new_event.clone());
        // COI_TEST_DC_EVENTS=FILE keeps every event (core's own log lines arrive as Info
        // events) for debugging an interop failure.
        let mut dump = std::env::var_os("COI_TEST_DC_EVENTS").and_then(|p| std::fs::File::create(p).ok());
        let pump = tokio::spawn(async move {
            while let Ok(ev) = r.call("get_next_event", json!([])).await {
                if let Some(f) = dump.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{ev}");
                }
                e.lock().expect("lock").push(ev);
                n.notify_waiters();
            }
        });
        Some(Self { child, rpc, events, new_event, dir, tasks: vec![reader, pump] })
    }

    /// Calls a method; `Err` carries the server's error object.
    pub async fn try_call(&self, method: &str, params: Value) -> Result<Value, Value> {
        tokio::time::timeout(Duration::from_secs(120), self.rpc.call(method, params))
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer in 120 s"))
    }

    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params.clone()).await.unwrap_or_else(|e| panic!("{method}({params}): {e}"))
    }

    /// How many events arrived so far: pass it to [`DeltaChat::wait_event_since`] to wait
    /// only for what happens after now.
    pub fn mark(&self) -> usize {
        self.events.lock().expect("lock").len()
    }

    /// Waits for an event of account `acc` matching `pred`, searching from the first
    /// event on; returns the inner event object.
    pub async fn wait_event(&self, acc: u64, what: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_since(0, acc, what, within, pred).await
    }

    /// [`DeltaChat::wait_event`], among the events after `since` (see [`DeltaChat::mark`]).
    pub async fn wait_event_since(
        &self,
        since: usize,
        acc: u64,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.new_event.notified();
            if let Some(ev) = self
                .events
                .lock()
                .expect("lock")
                .iter()
                .skip(since)
                .find(|ev| ev["contextId"].as_u64() == Some(acc) && pred(&ev["event"]))
            {
                return ev["event"].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {within:?} waiting for {what} on account {acc}; log {}",
                self.log_path().display()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Waits (bounded) until account `acc` shows a message with `text` in any chat, and
    /// returns it. Events only say "something changed", so this looks the text up.
    pub async fn message_with_text(&self, acc: u64, text: &str) -> Value {
        super::eventually(Duration::from_secs(60), &format!("Delta Chat shows {text:?}"), || async {
            let chats = self.call("get_chatlist_entries", json!([acc, null, null, null])).await;
            for chat in chats.as_array().cloned().unwrap_or_default() {
                let ids = self.call("get_message_ids", json!([acc, chat, false, false])).await;
                for id in ids.as_array().cloned().unwrap_or_default() {
                    let m = self.call("get_message", json!([acc, id])).await;
                    if m["text"].as_str() == Some(text) {
                        return Some(m);
                    }
                }
            }
            None
        })
        .await
    }

    /// Waits (bounded) until account `acc` is a member of `chat` and may write to it.
    /// The joiner's "progress 1000" can arrive before the member-added message that puts
    /// it in the group is applied, so writing right after it races.
    pub async fn wait_until_member(&self, acc: u64, chat: &Value) {
        super::eventually(Duration::from_secs(60), &format!("account {acc} is a member of chat {chat}"), || async {
            let c = self.call("get_full_chat_by_id", json!([acc, chat])).await;
            (c["selfInGroup"] == json!(true) && c["canSend"] == json!(true)).then_some(())
        })
        .await
    }

    /// The texts of a chat's messages, oldest first.
    pub async fn chat_texts(&self, acc: u64, chat: &Value) -> Vec<String> {
        let ids = self.call("get_message_ids", json!([acc, chat, false, false])).await;
        let msgs = self.call("get_messages", json!([acc, ids])).await;
        let mut out: Vec<(i64, String)> = msgs
            .as_object()
            .map(|m| m.values().filter_map(|v| Some((v["id"].as_i64()?, v["text"].as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        out.sort();
        out.into_iter().map(|(_, t)| t).collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("rpc.log")
    }

    /// Adds an account for `user@example.org` on `server` (plain IMAP and SMTP on
    /// loopback), with the given display name, and starts its IO.
    pub async fn account(&self, server: &MailServer, user: &str, name: &str) -> u64 {
        self.account_at(server.imap_port(), server.smtp_port(), user, name).await
    }

    /// An account `user@example.org` (password `user-secret`) on plain IMAP and SMTP at
    /// these loopback ports.
    pub async fn account_at(&self, imap_port: u16, smtp_port: u16, user: &str, name: &str) -> u64 {
        let acc = self.call("add_account", json!([])).await.as_u64().expect("account id");
        self.call(
            "add_or_update_transport",
            json!([acc, {
                "addr": format!("{user}@example.org"),
                "password": format!("{user}-secret"),
                "imapServer": "127.0.0.1",
                "imapPort": imap_port,
                "imapSecurity": "plain",
                "smtpServer": "127.0.0.1",
                "smtpPort": smtp_port,
                "smtpSecurity": "plain",
            }]),
        )
        .await;
        self.call("set_config", json!([acc, "displayname", name])).await;
        self.call("start_io", json!([acc])).await;
        acc
    }
}

impl DeltaChat {
    /// Account `acc` joins a group through its invite `link`; returns its chat id once it
    /// may write.
    pub async fn join(&self, acc: u64, link: &str, within: std::time::Duration) -> Value {
        let mark = self.mark();
        let chat = self.call("secure_join", json!([acc, link])).await;
        self.wait_event_since(mark, acc, "joined", within, |e| {
            e["kind"] == "SecurejoinJoinerProgress" && e["progress"].as_u64() == Some(1000)
        })
        .await;
        self.wait_until_member(acc, &chat).await;
        chat
    }
}

impl Drop for DeltaChat {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.child.start_kill();
    }
}
