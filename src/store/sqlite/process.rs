//! SQLite's process-wide settings, made once before the first connection opens: no lookaside slab per connection and no global memory statistics.
//!
//! A daemon with 1,000 accounts keeps 1,000 SQLite connections open (one per account
//! store) and opens up to four more per account in bursts of work. By default each
//! connection allocates a 48 KiB lookaside slab for its small objects, and every SQLite
//! allocation in the process updates global statistics under one mutex. The heap profile
//! of #12 (heaptrack, 100 accounts) found the slabs to be the largest single item at the
//! start (23.5 MB of 94 MB at the peak) and a quarter of what idle accounts hold; the
//! statistics serialise 1,000 worker threads on one lock. Neither is used by the bridge
//! (it never asks SQLite how much memory it holds), so both are off.

use std::sync::Once;

/// Applies the settings once per process; later calls do nothing. They only take effect
/// before SQLite initialises itself (the first connection opened in the process, from
/// any library); if that already happened the connections keep SQLite's defaults, which
/// costs memory but nothing else, and the log says so.
pub(super) fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use rusqlite::ffi;
        // SAFETY: sqlite3_config is documented as callable before sqlite3_initialize
        // (it returns SQLITE_MISUSE afterwards, which we report); both options take plain
        // ints, as passed. `Once` keeps two threads of ours from calling it at once.
        let (lookaside, memstatus) = unsafe {
            (
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0 as std::ffi::c_int, 0 as std::ffi::c_int),
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int),
            )
        };
        if lookaside == ffi::SQLITE_OK && memstatus == ffi::SQLITE_OK {
            tracing::debug!("store: SQLite configured (no lookaside, no memory statistics)");
        } else {
            tracing::info!(
                lookaside,
                memstatus,
                "store: SQLite was initialised before its memory settings could be made; it keeps its defaults"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    /// The settings apply in a fresh process: a connection opened afterwards has no
    /// lookaside slab (SQLITE_DBSTATUS_LOOKASIDE_USED and its highwater stay 0 after
    /// work that would use it). Other tests of this binary open SQLite first, so the
    /// check runs in a child process of its own (this test binary, filtered to it).
    #[test]
    fn a_connection_opened_after_configure_has_no_lookaside() {
        if !crate::testing::alone("store::sqlite::process::tests::a_connection_opened_after_configure_has_no_lookaside")
        {
            return;
        }
        super::configure();
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'); SELECT * FROM t;").expect("sql");
        let (mut cur, mut high) = (0, 0);
        // SAFETY: a valid open connection, used by this thread only; the out-params are ours.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_LOOKASIDE_USED,
                &mut cur,
                &mut high,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        assert_eq!((cur, high), (0, 0), "lookaside slots were used: the slab is still there");
    }
}
