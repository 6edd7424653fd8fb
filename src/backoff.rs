//! Capped exponential backoff with jitter, shared by everything that retries
//! (reopening a serial port, reconnecting to PostgreSQL).

use std::time::Duration;

/// Capped exponential backoff with jitter, so that many hosts whose boards
/// come back together do not retry in lock step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
            seed,
        }
    }

    /// The next delay: the current step with up to ±10 % jitter, never above the cap.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
        let delay = self.current.mul_f64(1.0 + 0.1 * frac).min(self.max);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the initial step (after a successful connection).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let nominal = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, n) in delays.iter().zip(nominal) {
            let n = Duration::from_millis(n);
            assert!(
                *d >= n.mul_f64(0.9) && *d <= n.mul_f64(1.1).min(Duration::from_secs(2)),
                "{d:?} vs {n:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(110));
    }
}
