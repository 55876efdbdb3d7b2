//! Waiting for a condition the test does not control: look, and look again
//! after a pause, until it holds or the time allowed has passed. One home
//! for that shape, so every wait reports what its last look saw.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// What one look saw.
pub enum Look<T, S> {
    /// The condition holds; the value the wait returns.
    Done(T),
    /// Not yet; what was seen, returned when the time runs out.
    NotYet(S),
}

/// Looks every `every` until `look` sees the condition, for at most
/// `within`. `Ok(Err(last))` when the time ran out, with what the last look
/// saw; an error a look returns ends the wait at once.
pub async fn until<T, S, F, Fut>(
    within: Duration,
    every: Duration,
    mut look: F,
) -> anyhow::Result<Result<T, S>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Look<T, S>>>,
{
    let deadline = Instant::now() + within;
    loop {
        match look().await? {
            Look::Done(value) => return Ok(Ok(value)),
            Look::NotYet(seen) if Instant::now() >= deadline => return Ok(Err(seen)),
            Look::NotYet(_) => sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_the_first_look_that_sees_the_condition() {
        let looks = AtomicU32::new(0);
        let got = until(Duration::from_secs(60), Duration::from_secs(1), || async {
            let n = looks.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if n == 3 {
                Look::Done(n)
            } else {
                Look::NotYet(n)
            })
        })
        .await
        .unwrap();
        assert_eq!(got.ok(), Some(3));
        assert_eq!(looks.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_runs_out_of_time_gives_the_last_look() {
        let started = Instant::now();
        let looks = AtomicU32::new(0);
        let got: Result<(), u32> =
            until(Duration::from_secs(10), Duration::from_secs(2), || async {
                Ok(Look::NotYet(looks.fetch_add(1, Ordering::SeqCst) + 1))
            })
            .await
            .unwrap();
        // Looks at 0, 2, 4, 6, 8 and 10 s.
        assert_eq!(got.err(), Some(6));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_in_a_look_ends_the_wait() {
        let got: anyhow::Result<Result<(), ()>> =
            until(Duration::from_secs(10), Duration::from_secs(1), || async {
                anyhow::bail!("the API server is gone")
            })
            .await;
        assert!(got.unwrap_err().to_string().contains("API server"));
    }
}
