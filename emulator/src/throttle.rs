//! Per-API token buckets: AWS documents no TPS for the provisioning APIs,
//! so the rates are settings (see README for the defaults).

use std::sync::Mutex;
use std::time::Instant;

/// A rate: `per_second` tokens refill continuously up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Rate { per_second, burst }
    }
}

#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: Rate,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: Rate) -> Self {
        TokenBucket {
            rate,
            state: Mutex::new((f64::from(rate.burst), Instant::now())),
        }
    }

    /// Takes one token; false when the API is throttled.
    pub fn try_acquire(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.rate.per_second;
        st.0 = (st.0 + refill).min(f64::from(self.rate.burst));
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}
