//! Bounded retries with exponential backoff and full jitter.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(15),
        }
    }

    /// The delay before retry number `attempt` (1-based): uniform in
    /// `[0, min(cap, base * 2^(attempt-1))]` ("full jitter").
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let b = Backoff::new(5);
        for attempt in 1..40 {
            let d = b.delay(attempt);
            let ceiling = (b.base * 2u32.saturating_pow(attempt - 1)).min(b.cap);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        // Jitter: not every delay is the same.
        let ds: std::collections::BTreeSet<_> = (0..20).map(|_| b.delay(6)).collect();
        assert!(ds.len() > 1);
    }
}
