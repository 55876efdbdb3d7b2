//! A token bucket shared by all workers of a pod, so that `--rows-per-second`
//! and `--bytes-per-second` bound the pod as a whole.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Limits a rate; `None` means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: Option<f64>,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    available: f64,
    refilled: Instant,
}

impl RateLimiter {
    pub fn new(per_second: Option<u64>) -> Self {
        let per_second = per_second.filter(|r| *r > 0).map(|r| r as f64);
        RateLimiter {
            per_second,
            state: Mutex::new(Bucket {
                // Start with a tenth of a second's worth, not a full second,
                // so that a restarted pod does not burst.
                available: per_second.map_or(0.0, |r| r / 10.0),
                refilled: Instant::now(),
            }),
        }
    }

    /// Whether it limits anything: an amount that is costly to count need
    /// not be counted for a limiter that never waits.
    pub fn is_limited(&self) -> bool {
        self.per_second.is_some()
    }

    /// Waits until `amount` units may pass. Amounts above one second's
    /// worth are let through when the bucket is full (a huge row must not
    /// block forever).
    pub async fn acquire(&self, amount: u64) {
        let Some(rate) = self.per_second else {
            return;
        };
        let amount = (amount as f64).min(rate);
        loop {
            let wait = {
                let mut bucket = self.state.lock().await;
                let now = Instant::now();
                let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
                bucket.available = (bucket.available + elapsed * rate).min(rate);
                bucket.refilled = now;
                if bucket.available >= amount {
                    bucket.available -= amount;
                    return;
                }
                (amount - bucket.available) / rate
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_the_rate() {
        let limiter = RateLimiter::new(Some(1000));
        let start = Instant::now();
        for _ in 0..30 {
            limiter.acquire(10).await;
        }
        // 300 units at 1000/s with 100 up front: at least ~0.2 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(180), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let unlimited = RateLimiter::new(None);
        let start = Instant::now();
        unlimited.acquire(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
