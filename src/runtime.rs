//! The tokio runtimes, built in one place: the one-thread runtime of every
//! command that talks to the network (and of the daemon's rotation thread),
//! and the daemon's.

use std::io;

/// One thread: the agent does one thing at a time, and the hardware calls
/// block.
pub fn current_thread() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The daemon's runtime: one worker, and multi-threaded so that a wait for
/// the key helper leaves the worker (`block_in_place` in
/// [`crate::keystore::helper::HelperKeyStore`]) and signals and the watchdog
/// are served meanwhile.
pub fn daemon() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}
