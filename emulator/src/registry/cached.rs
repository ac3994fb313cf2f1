//! Statements compiled once per connection: `execute_cached` and
//! `query_row_cached` are rusqlite's `execute` and `query_row` through the
//! connection's prepared-statement cache.
//!
//! Why: rusqlite's `execute` and `query_row` compile their SQL on every
//! call, and the registry's statements are few and run on every
//! handshake, CONNECT, policy reload and provisioning request. Compiling
//! them was about a tenth of the emulator's CPU under many enrollments at
//! once (`sqlite3RunParser` under `Connection::prepare`), and it happened
//! with the registry's mutex held. A cached statement is reset and its
//! bindings cleared when it goes back to the cache, so it behaves as a
//! freshly prepared one.

use rusqlite::{Connection, Params, Row};

/// More than the registry's distinct statements (about 50), so that none
/// is ever evicted and compiled again.
pub(super) const STATEMENT_CACHE_CAPACITY: usize = 128;

pub(super) trait CachedStatements {
    /// As [`Connection::execute`], with the statement from the cache.
    fn execute_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;

    /// As [`Connection::query_row`], with the statement from the cache.
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}
