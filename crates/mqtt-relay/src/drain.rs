//! Drain before fill: while s-proxy is short of CPU and behind on reading what the broker sends
//! its clients, it holds back what its clients send the broker.
//!
//! A relay session is two tasks, one per direction, and the runtime polls tasks in turn. With
//! more publishing sessions than subscribing ones on a saturated CPU, the publishing direction
//! gets most turns: s-proxy feeds the broker faster than it reads the broker's deliveries back,
//! and the broker drops QoS 0 messages for the relay's subscribers that it would have delivered
//! to them directly (most of them, in our 2-core benchmark with 4 publishers and 1 subscriber;
//! figures in docs/benchmarks.md, "Figures the code's design rests on"). This is receive
//! livelock, and the classic cure applies: under overload, give the output side priority (the
//! same benchmark then loses nothing).
//!
//! The rule is armed only while the process waits on the CPU run queue more than
//! [`OVERLOADED_WAIT`] of the time: a backlog on a machine with CPU to spare is a slow client,
//! which must not hold up anybody else. Armed, a write to the broker waits while some session
//! is behind on reading the broker (its last read filled a whole batch, so more is waiting),
//! until a session reads, and never longer than [`MAX_HOLD`], so both directions always move.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The longest one write waits.
pub const MAX_HOLD: Duration = Duration::from_millis(10);

/// Run-queue wait of the process's threads, as a fraction of wall time, above which s-proxy
/// counts as short of CPU.
pub const OVERLOADED_WAIT: f64 = 0.2;

const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Whether a process is short of CPU, and how many of its sessions are behind on reading the
/// broker.
#[derive(Debug, Default)]
pub struct Backlog {
    behind: AtomicUsize,
    read: Notify,
    overloaded: AtomicBool,
}

impl Backlog {
    /// A session's reading side, to report whether it is behind.
    pub fn session(self: &Arc<Self>) -> SessionLag {
        SessionLag {
            backlog: self.clone(),
            behind: false,
        }
    }

    /// Returns at once unless the process is short of CPU and a session is behind on reading;
    /// then when no session is behind any more, or after [`MAX_HOLD`].
    pub async fn drained(&self) {
        if !self.overloaded.load(Ordering::Relaxed) {
            return;
        }
        let wait = async {
            loop {
                let read = self.read.notified();
                let armed = self.overloaded.load(Ordering::Relaxed);
                if !armed || self.behind.load(Ordering::Acquire) == 0 {
                    return;
                }
                read.await;
            }
        };
        let _ = tokio::time::timeout(MAX_HOLD, wait).await;
    }

    /// Samples the process's run-queue wait every 20 ms until `stop`, arming the rule while it
    /// is above [`OVERLOADED_WAIT`].
    pub async fn watch_cpu(self: Arc<Self>, stop: CancellationToken) {
        let mut last = (Instant::now(), run_queue_wait());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
            let now = (Instant::now(), run_queue_wait());
            let wall = now.0.duration_since(last.0).as_nanos() as f64;
            let waited = now.1.saturating_sub(last.1) as f64;
            self.set_overloaded(wall > 0.0 && waited / wall > OVERLOADED_WAIT);
            last = now;
        }
    }

    fn set_overloaded(&self, overloaded: bool) {
        let was = self.overloaded.swap(overloaded, Ordering::Relaxed);
        if was && !overloaded {
            // Disarmed: nothing waits any more.
            self.read.notify_waiters();
        }
    }
}

/// Nanoseconds the process's threads have spent runnable but not running (second field of
/// `/proc/<pid>/task/<tid>/schedstat`); 0 where that is not available.
fn run_queue_wait() -> u64 {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    threads
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("schedstat")).ok())
        .filter_map(|stat| waited(&stat))
        .sum()
}

/// The run-queue wait of one `schedstat` line: on-CPU ns, waiting ns, time slices.
fn waited(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// A session's reading side: reports whether it is behind, and stops counting when dropped.
#[derive(Debug)]
pub struct SessionLag {
    backlog: Arc<Backlog>,
    behind: bool,
}

impl SessionLag {
    /// After a read: `behind` when it filled a whole batch (more is waiting in the socket),
    /// not when the socket had nothing more.
    pub fn set_behind(&mut self, behind: bool) {
        if self.behind == behind {
            return;
        }
        self.behind = behind;
        if behind {
            self.backlog.behind.fetch_add(1, Ordering::AcqRel);
        } else if self.backlog.behind.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.backlog.read.notify_waiters();
        }
    }
}

impl Drop for SessionLag {
    fn drop(&mut self) {
        self.set_behind(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_cpu_to_spare_a_session_behind_holds_nobody_up() {
        let backlog = Arc::new(Backlog::default());
        let mut session = backlog.session();
        session.set_behind(true);
        tokio::time::timeout(MAX_HOLD / 2, backlog.drained())
            .await
            .expect("not held");
    }

    #[tokio::test]
    async fn short_of_cpu_writes_wait_until_no_session_is_behind() {
        let backlog = Arc::new(Backlog::default());
        backlog.set_overloaded(true);
        let (mut first, mut second) = (backlog.session(), backlog.session());
        first.set_behind(true);
        second.set_behind(true);
        let held = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.drained().await }
        });
        tokio::task::yield_now().await;
        first.set_behind(false);
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "went ahead while a session was behind");

        drop(second);
        tokio::time::timeout(MAX_HOLD / 2, held)
            .await
            .expect("went on once no session was behind")
            .unwrap();
    }

    #[tokio::test]
    async fn a_write_is_held_at_most_max_hold() {
        let backlog = Arc::new(Backlog::default());
        backlog.set_overloaded(true);
        let mut session = backlog.session();
        session.set_behind(true);
        let started = Instant::now();
        backlog.drained().await;
        assert!(started.elapsed() >= MAX_HOLD);
    }

    #[tokio::test]
    async fn disarming_releases_held_writes() {
        let backlog = Arc::new(Backlog::default());
        backlog.set_overloaded(true);
        let mut session = backlog.session();
        session.set_behind(true);
        let held = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "went ahead while a session was behind");
        backlog.set_overloaded(false);
        tokio::time::timeout(MAX_HOLD / 2, held)
            .await
            .expect("released")
            .unwrap();
    }

    #[test]
    fn the_run_queue_wait_is_the_second_field_of_schedstat() {
        assert_eq!(waited("8071862469 1290566 7431\n"), Some(1_290_566));
        assert_eq!(waited("8071862469\n"), None);
        assert_eq!(waited("not numbers here"), None);
    }
}
