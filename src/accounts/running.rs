//! What the HTTP listener reads about the accounts: which run here (with their health and store), which cannot and why, and the bridges' routes as accounts add them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::health::Health;
use crate::store::Store;

/// One running account as `/ready` and `/metrics` see it.
#[derive(Clone)]
pub struct AccountView {
    /// Its address, lower-cased.
    pub key: String,
    /// The main file's account (its parts keep their plain names in `/ready`).
    pub main: bool,
    pub health: Arc<Health>,
    pub store: Arc<dyn Store>,
    /// Every outbox target (smtp and each bridge id): their gauges read 0 when empty.
    pub targets: Vec<String>,
    /// The epoch of the lease it runs under (PostgreSQL).
    pub epoch: Option<i64>,
    /// Wakes its outbox workers (`POST /wake`: rows another process queued).
    pub outbox: Arc<crate::hub::wake::OutboxNotifier>,
    /// Wakes its look for released mail (`POST /wake` after `quarantine release`).
    pub released: Arc<tokio::sync::Notify>,
}

/// The accounts of this daemon.
pub struct Running {
    accounts: RwLock<BTreeMap<String, AccountView>>,
    /// Accounts (or account files) that cannot run, with why.
    broken: Mutex<BTreeMap<String, String>>,
    /// This daemon's lease holder name (PostgreSQL).
    pub node: Option<String>,
    /// The running accounts that take Dovecot's push events, by key.
    push: RwLock<BTreeMap<String, Arc<crate::transport::push::PushAccount>>>,
}

impl Running {
    pub fn new(node: Option<String>) -> Self {
        Self { accounts: RwLock::default(), broken: Mutex::default(), node, push: RwLock::default() }
    }

    /// A registry of one account (tests, tools).
    pub fn single(view: AccountView) -> Arc<Self> {
        let r = Arc::new(Self::new(None));
        r.insert(view);
        r
    }

    pub fn insert(&self, view: AccountView) {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).remove(&view.key);
        self.accounts.write().unwrap_or_else(|e| e.into_inner()).insert(view.key.clone(), view);
    }

    pub fn remove(&self, key: &str) {
        self.accounts.write().unwrap_or_else(|e| e.into_inner()).remove(key);
        self.push.write().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// An account takes push events (`[imap] push = true`) until removed.
    pub fn insert_push(&self, account: Arc<crate::transport::push::PushAccount>) {
        self.push.write().unwrap_or_else(|e| e.into_inner()).insert(account.key.clone(), account);
    }

    /// The accounts that take push events.
    pub fn push_accounts(&self) -> Vec<Arc<crate::transport::push::PushAccount>> {
        self.push.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.accounts.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The running accounts, by key.
    pub fn list(&self) -> Vec<AccountView> {
        self.accounts.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn set_broken(&self, key: &str, why: String) {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), why);
    }

    pub fn clear_broken(&self) {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Accounts (or files) that cannot run, with why.
    pub fn broken(&self) -> BTreeMap<String, String> {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every running account's store answers (the watchdog's ping).
    pub async fn ping(&self) -> Result<(), crate::store::StoreError> {
        for a in self.list() {
            a.store.ping().await?;
        }
        Ok(())
    }
}

/// The bridges' routes, mounted once each for the daemon's life as accounts start (the
/// first account on an appservice registration returns its endpoint's routes; the others
/// share it). The listener asks the current set on every request that no fixed route takes.
#[derive(Default)]
pub struct DynamicRoutes {
    router: Arc<RwLock<axum::Router>>,
}

impl DynamicRoutes {
    /// Adds routes; a path already served is kept as it is (axum would panic on the merge).
    pub fn add(&self, more: axum::Router) {
        let mut r = self.router.write().unwrap_or_else(|e| e.into_inner());
        let current = std::mem::take(&mut *r);
        let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| current.clone().merge(more)));
        *r = match merged {
            Ok(m) => m,
            Err(_) => {
                tracing::error!("two bridges serve the same HTTP path with different endpoints; the first one is kept");
                current
            }
        };
    }

    /// A router whose fallback serves whatever routes have been added by then.
    pub fn router(&self) -> axum::Router {
        let routes = self.router.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let current = routes.read().unwrap_or_else(|e| e.into_inner()).clone();
            async move {
                use tower::ServiceExt as _;
                match current.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        })
    }
}
