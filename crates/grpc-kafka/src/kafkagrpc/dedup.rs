//! Answered calls by correlation id, for a window: a redelivered or retried call is answered
//! from its recorded replies instead of calling the service again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Answer;

pub(crate) struct Answered {
    /// None when the answer was too big to keep (the call is then made again).
    pub replies: Option<Arc<Answer>>,
    /// Whether the request stream's end record was seen; until then, a null record belongs to
    /// the original call, not to a repeat.
    pub request_ended: bool,
}

pub(crate) struct Dedup {
    window: Duration,
    max: usize,
    entries: HashMap<String, Answered>,
    order: VecDeque<(Instant, String)>,
}

impl Dedup {
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn insert(&mut self, id: String, replies: Option<Arc<Answer>>, request_ended: bool) {
        if self.window.is_zero() {
            return;
        }
        self.expire();
        while self.entries.len() >= self.max {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.order.push_back((Instant::now(), id.clone()));
        self.entries.insert(
            id,
            Answered {
                replies,
                request_ended,
            },
        );
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Answered> {
        self.expire();
        self.entries.get_mut(id)
    }

    pub fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            self.entries.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Option<Arc<Answer>> {
        Some(Arc::new(Answer {
            topic: "rep".into(),
            key: "k".into(),
            records: Vec::new(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_for_the_window_and_are_bounded() {
        let mut dedup = Dedup::new(Duration::from_secs(60), 2);
        dedup.insert("a".into(), answer(), true);
        assert!(dedup.get_mut("a").is_some());
        tokio::time::advance(Duration::from_secs(30)).await;
        dedup.insert("b".into(), answer(), false);
        dedup.insert("c".into(), answer(), true);
        assert!(dedup.get_mut("a").is_none(), "evicted by the size bound");
        assert!(!dedup.get_mut("b").unwrap().request_ended);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(dedup.get_mut("b").is_some());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(dedup.get_mut("b").is_none(), "expired after the window");
    }
}
