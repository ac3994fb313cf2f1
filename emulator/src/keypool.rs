//! RSA-2048 keys made ahead of time for CreateKeysAndCertificate, which
//! would otherwise spend 0.3 to 1 s of CPU on each request making one.
//!
//! Invariants:
//! - a key leaves the pool by being moved out of it ([`KeyPool::take`]):
//!   it is handed out once, never twice, and never kept by the pool;
//! - an empty (or disabled, or stopped) pool never fails a request: the
//!   caller's thread makes the key itself;
//! - dedicated OS threads refill the pool: one, and one more per 64 keys
//!   of capacity up to one per CPU (a small pool, as most emulators have,
//!   never takes more than a core from the tests beside it); they never
//!   fill it past its capacity, sleep while it is full, and end at the
//!   latest one key generation after [`KeyPool::stop`] (or the pool's
//!   drop);
//! - the refill threads run at the lowest priority (nice 19, on Linux a
//!   thread's own): they get the CPU time requests leave, so that a burst
//!   of requests is served at full speed from the stock while the refill
//!   waits for a lull, instead of the refill taking half the machine just
//!   when the stock is drawn on (`ci/bench.sh emulator 1000 keys`);
//! - keys are wiped when dropped (`rsa::RsaPrivateKey` is `ZeroizeOnDrop`),
//!   pooled ones included.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rsa::RsaPrivateKey;

/// The size of the keys CreateKeysAndCertificate answers with (AWS's).
pub(crate) const RSA_BITS: usize = 2048;

/// The keys in stock, and whether the refill thread is asked to end.
struct Stock {
    keys: Vec<RsaPrivateKey>,
    stopping: bool,
}

struct Shared {
    stock: Mutex<Stock>,
    /// Signalled when a key is taken or the pool is stopped.
    changed: Condvar,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Stock> {
        self.stock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct KeyPool {
    shared: Arc<Shared>,
    refill: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for KeyPool {
    /// Prints the counts, never a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPool")
            .field("capacity", &self.shared.capacity)
            .field("pooled", &self.pooled())
            .finish()
    }
}

/// A fresh RSA key of [`RSA_BITS`] bits.
pub(crate) fn generate() -> Result<RsaPrivateKey, rsa::Error> {
    RsaPrivateKey::new(&mut rand::thread_rng(), RSA_BITS)
}

impl KeyPool {
    /// A pool of up to `capacity` keys and its refill threads, which start
    /// filling it at once; `capacity` 0 starts no thread (every
    /// [`KeyPool::take`] makes its key).
    pub fn start(capacity: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            stock: Mutex::new(Stock {
                keys: Vec::with_capacity(capacity),
                stopping: false,
            }),
            changed: Condvar::new(),
            capacity,
        });
        let threads = if capacity == 0 {
            0
        } else {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (capacity / 64 + 1).min(cpus)
        };
        let mut refill_threads = Vec::with_capacity(threads);
        for _ in 0..threads {
            let shared = shared.clone();
            refill_threads.push(
                std::thread::Builder::new()
                    .name("rsa-key-pool".into())
                    .spawn(move || refill(&shared))?,
            );
        }
        let refill = refill_threads;
        Ok(KeyPool {
            shared,
            refill: Mutex::new(refill),
        })
    }

    /// A key no one else was or will be given: from the pool when it has
    /// one, else made now on the calling thread (blocking: call it from a
    /// blocking context).
    pub fn take(&self) -> Result<RsaPrivateKey, rsa::Error> {
        let pooled = self.shared.lock().keys.pop();
        match pooled {
            Some(key) => {
                self.shared.changed.notify_all();
                Ok(key)
            }
            None => {
                tracing::debug!("RSA key pool empty: making the key in the request");
                generate()
            }
        }
    }

    /// Keys ready now.
    pub fn pooled(&self) -> usize {
        self.shared.lock().keys.len()
    }

    /// Asks the refill threads to end, wipes the pooled keys, and returns
    /// the threads' handles (once; none afterwards or without threads) for
    /// the caller to join. Later takes make their own keys.
    pub fn stop(&self) -> Vec<JoinHandle<()>> {
        {
            let mut stock = self.shared.lock();
            stock.stopping = true;
            stock.keys.clear();
        }
        self.shared.changed.notify_all();
        std::mem::take(&mut *self.refill.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for KeyPool {
    /// Stops the thread without waiting for it (it ends after the key it
    /// may be making).
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The refill thread: makes keys while the pool has room, sleeps while it
/// is full, and returns once stopped.
fn refill(shared: &Shared) {
    idle_priority();
    loop {
        {
            let mut stock = shared.lock();
            while !stock.stopping && stock.keys.len() >= shared.capacity {
                stock = shared
                    .changed
                    .wait(stock)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if stock.stopping {
                return;
            }
        }
        // Made without the lock held, so that takes are never kept waiting.
        let key = match generate() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("RSA key pool: key generation failed, pool stops refilling: {e}");
                return;
            }
        };
        let mut stock = shared.lock();
        if stock.stopping {
            return; // `key` is wiped as it drops
        }
        // Another thread may have filled the last place meanwhile.
        if stock.keys.len() < shared.capacity {
            stock.keys.push(key);
        }
    }
}

/// The lowest priority for the calling thread: on Linux `setpriority` with
/// a thread id applies to that thread only. A refusal is logged and the
/// thread refills at normal priority.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!("RSA key pool: cannot lower the refill thread's priority: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    fn wait_for(pool: &KeyPool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.pooled() < n {
            assert!(Instant::now() < deadline, "pool never reached {n} keys");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn fills_to_capacity_and_hands_each_key_out_once() {
        let pool = KeyPool::start(3).unwrap();
        wait_for(&pool, 3);
        // Full: the thread sleeps instead of making more.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pool.pooled(), 3);
        // Three pooled keys and two made by the caller (the pool being
        // empty), all distinct.
        let moduli: Vec<_> = (0..5).map(|_| pool.take().unwrap().n().clone()).collect();
        let distinct: HashSet<_> = moduli.iter().collect();
        assert_eq!(distinct.len(), 5);
        // It refills after the takes, with new keys.
        wait_for(&pool, 1);
        let again = pool.take().unwrap().n().clone();
        assert!(!distinct.contains(&again));
    }

    #[test]
    fn stop_ends_the_thread_and_takes_still_work() {
        let pool = KeyPool::start(2).unwrap();
        let threads = pool.stop();
        assert!(!threads.is_empty());
        // At most the one key each was making.
        let started = Instant::now();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(pool.pooled(), 0);
        assert!(pool.stop().is_empty());
        assert_eq!(pool.take().unwrap().size() * 8, RSA_BITS);
    }

    /// The nice value of each of this process's threads named
    /// `rsa-key-pool` (field 19 of `/proc/self/task/TID/stat`).
    fn refill_nice_values() -> Vec<i32> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "rsa-key-pool" {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // ended meanwhile
            };
            // After the command's closing parenthesis: state is field 3.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            nice.push(fields[19 - 3].parse().unwrap());
        }
        nice
    }

    #[test]
    fn the_refill_threads_run_at_the_lowest_priority() {
        let pool = KeyPool::start(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let nice = refill_nice_values();
            // Other tests' pools run in this process too: every refill
            // thread, once started, is at nice 19.
            if !nice.is_empty() && nice.iter().all(|&n| n == 19) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "refill threads' nice values: {nice:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(pool);
    }

    #[test]
    fn capacity_zero_has_no_thread() {
        let pool = KeyPool::start(0).unwrap();
        assert!(pool.stop().is_empty());
        assert_eq!(pool.take().unwrap().size() * 8, RSA_BITS);
    }
}
