//! Answered calls by correlation id, for a window: a redelivered or retried call is answered
//! from its recorded replies instead of calling the service again.
//!
//! Bounded by entries and by bytes (`dedupMaxBytes`): past either, the oldest answers are
//! forgotten early (counted), and a repeat of such a call calls the service again, as one
//! after the window would.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge};
use tokio::time::Instant;

use super::Answer;

pub(crate) struct Answered {
    /// None when the answer was too big to keep (the call is then made again).
    pub replies: Option<Arc<Answer>>,
    /// Whether the request stream's end record was seen; until then, a null record belongs to
    /// the original call, not to a repeat.
    pub request_ended: bool,
    /// What this entry counts against the byte budget.
    bytes: usize,
    /// When it was recorded: tells it from an older entry of the same id in `order`.
    at: Instant,
}

/// Where the store reports its size and early evictions.
pub(crate) struct DedupMetrics {
    pub bytes: IntGauge,
    pub evictions: IntCounterVec,
}

pub(crate) struct Dedup {
    window: Duration,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<String, Answered>,
    order: VecDeque<(Instant, String)>,
    metrics: DedupMetrics,
}

impl Answer {
    /// Bytes the recorded replies hold.
    pub(crate) fn size(&self) -> usize {
        self.topic.len() + self.key.len() + self.records.iter().map(|r| r.size()).sum::<usize>()
    }
}

impl Dedup {
    pub fn new(
        window: Duration,
        max_entries: usize,
        max_bytes: usize,
        metrics: DedupMetrics,
    ) -> Self {
        Self {
            window,
            max_entries,
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            metrics,
        }
    }

    /// An answer read back from a reply topic: kept unless this store knows the call already
    /// (its own entry says more, e.g. whether the request stream has ended).
    pub fn learn(&mut self, id: String, answer: Arc<Answer>) {
        if !self.entries.contains_key(&id) {
            // Written once the request was whole, so a record of it now is a repeat.
            self.insert(id, Some(answer), true);
        }
    }

    pub fn insert(&mut self, id: String, replies: Option<Arc<Answer>>, request_ended: bool) {
        if self.window.is_zero() {
            return;
        }
        self.expire();
        let bytes = id.len() + replies.as_ref().map_or(0, |a| a.size());
        if bytes > self.max_bytes {
            return; // never fits (the config keeps answers below the budget)
        }
        self.remove(&id);
        // The oldest go until the new entry fits both bounds; each eviction counts its bound.
        while let Some(bound) = self.bound_reached(bytes) {
            self.evict_oldest(bound);
        }
        let at = Instant::now();
        self.order.push_back((at, id.clone()));
        self.bytes += bytes;
        self.entries.insert(
            id,
            Answered {
                replies,
                request_ended,
                bytes,
                at,
            },
        );
        self.metrics.bytes.set(self.bytes as i64);
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Answered> {
        self.expire();
        self.entries.get_mut(id)
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(gone) = self.entries.remove(id) {
            self.bytes -= gone.bytes;
            self.metrics.bytes.set(self.bytes as i64);
        }
    }

    /// The bound (`entries` or `bytes`) an entry of `bytes` more would pass, if any.
    fn bound_reached(&self, bytes: usize) -> Option<&'static str> {
        if self.entries.len() >= self.max_entries {
            Some("entries")
        } else if self.bytes + bytes > self.max_bytes {
            Some("bytes")
        } else {
            None
        }
    }

    /// Forgets the oldest entry before its window ends; `bound` is what forced it.
    fn evict_oldest(&mut self, bound: &str) {
        // `order` may still name entries removed or replaced since: skip those.
        while let Some((at, oldest)) = self.order.pop_front() {
            if self.is_current(&oldest, at) {
                self.remove(&oldest);
                self.metrics.evictions.with_label_values(&[bound]).inc();
                return;
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            let (at, id) = self.order.pop_front().expect("front exists");
            if self.is_current(&id, at) {
                self.remove(&id);
            }
        }
    }

    /// Whether `id`'s entry is the one recorded at `at` (not removed or replaced since).
    fn is_current(&self, id: &str, at: Instant) -> bool {
        self.entries.get(id).is_some_and(|e| e.at == at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::wire::ReplyRecord;
    use bytes::Bytes;

    fn metrics() -> DedupMetrics {
        DedupMetrics {
            bytes: IntGauge::new("b", "b").unwrap(),
            evictions: IntCounterVec::new(prometheus::Opts::new("e", "e"), &["bound"]).unwrap(),
        }
    }

    /// Entries forgotten early because of `bound` (`entries` or `bytes`).
    fn evictions(dedup: &Dedup, bound: &str) -> u64 {
        dedup.metrics.evictions.with_label_values(&[bound]).get()
    }

    fn answer(value_bytes: usize) -> Option<Arc<Answer>> {
        Some(Arc::new(Answer {
            topic: "rep".into(),
            key: "k".into(),
            records: vec![ReplyRecord {
                value: Some(Bytes::from(vec![0u8; value_bytes])),
                headers: Vec::new(),
            }],
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_for_the_window_and_are_bounded() {
        let mut dedup = Dedup::new(Duration::from_secs(60), 2, 1 << 20, metrics());
        dedup.insert("a".into(), answer(0), true);
        assert!(dedup.get_mut("a").is_some());
        tokio::time::advance(Duration::from_secs(30)).await;
        dedup.insert("b".into(), answer(0), false);
        dedup.insert("c".into(), answer(0), true);
        assert!(dedup.get_mut("a").is_none(), "evicted by the size bound");
        assert_eq!(evictions(&dedup, "entries"), 1);
        assert!(!dedup.get_mut("b").unwrap().request_ended);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(dedup.get_mut("b").is_some());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(dedup.get_mut("b").is_none(), "expired after the window");
        assert_eq!(evictions(&dedup, "entries"), 1, "expiry is no eviction");
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_answers_go_when_the_byte_budget_is_reached() {
        // Each entry: 1 (id) + 3 + 1 (topic, key) + 1000 (value) = 1005 bytes.
        let mut dedup = Dedup::new(Duration::from_secs(60), 100, 3000, metrics());
        for id in ["a", "b"] {
            dedup.insert(id.into(), answer(1000), true);
        }
        assert_eq!(dedup.metrics.bytes.get(), 2010);
        dedup.insert("c".into(), answer(1000), true);
        assert!(dedup.get_mut("a").is_none(), "the oldest went");
        assert!(dedup.get_mut("b").is_some() && dedup.get_mut("c").is_some());
        assert_eq!(dedup.metrics.bytes.get(), 2010);
        assert_eq!(evictions(&dedup, "bytes"), 1);
        // Replacing an entry frees its old bytes first.
        dedup.insert("c".into(), answer(10), true);
        assert_eq!(dedup.metrics.bytes.get(), 1005 + 15);
        dedup.remove("b");
        dedup.remove("c");
        assert_eq!(dedup.metrics.bytes.get(), 0);
        assert_eq!(evictions(&dedup, "bytes"), 1);
    }
}
