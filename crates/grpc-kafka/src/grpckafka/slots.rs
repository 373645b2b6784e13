//! Counted, capped resources of grpc-kafka (connections, fetch streams): a slot is taken when
//! one opens and given back when it ends; none left means the limit is reached.

use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    open: IntGauge,
    pub max: usize,
}

/// Held while the resource is open.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Slots {
    /// `open`: the gauge of slots in use.
    pub fn new(max: usize, open: IntGauge) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            open,
            max,
        }
    }

    /// A slot, or `None` when all `max` are in use.
    pub fn take(&self) -> Option<Slot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.open.inc();
        Some(Slot {
            _permit: permit,
            open: self.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_counted_and_given_back() {
        let slots = Slots::new(2, IntGauge::new("open", "open").unwrap());
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none(), "the third is over the limit");
        assert_eq!(slots.open.get(), 2);
        drop(a);
        assert_eq!(slots.open.get(), 1);
        assert!(slots.take().is_some(), "a slot given back is free again");
    }
}
