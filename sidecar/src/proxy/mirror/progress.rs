//! How the spool's drain is going, as the replayer sees it: when it last
//! made progress and why it last failed. The admin endpoint reports it
//! (`/state`, `ferry_proxy_spool_stalled_seconds`) so the operator can tell
//! a spool that drains from one that is stuck (a target refusing the head
//! record, a target that is down) and hold the migration back from `Ready`
//! and pods back from eviction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest error text kept: the status a user reads, not a log.
const MAX_ERROR_CHARS: usize = 300;

#[derive(Debug)]
pub struct ReplayProgress {
    started: Instant,
    /// Milliseconds after `started` of the last progress: a record
    /// acknowledged, or the spool seen empty.
    last_progress_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Default for ReplayProgress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl ReplayProgress {
    /// The replayer acknowledged records, or found nothing to replay.
    pub fn progressed(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms.fetch_max(ms, Ordering::AcqRel);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// Replaying the spool's head failed.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let mut text = error.to_string();
        if text.chars().count() > MAX_ERROR_CHARS {
            text = text.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(text);
        }
    }

    /// How long a spool of `records` has gone without progress: zero when
    /// it is empty.
    pub fn stalled_for(&self, records: u64) -> Duration {
        if records == 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }

    /// Why the last replay failed, unless one succeeded since.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_spool_is_never_stalled_and_progress_clears_the_error() {
        let p = ReplayProgress::default();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(p.stalled_for(0), Duration::ZERO);
        assert!(p.stalled_for(5) >= Duration::from_millis(30));
        p.failed(&"unconfigured table shop.orders");
        assert_eq!(
            p.last_error().as_deref(),
            Some("unconfigured table shop.orders")
        );
        p.progressed();
        assert!(p.stalled_for(5) < Duration::from_millis(30));
        assert_eq!(p.last_error(), None);
    }
}
