use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Readiness of a process: the conjunction of named flags that its parts register.
///
/// A process is live as long as it answers; it is ready when every registered flag is set
/// (and it is not shutting down, which the admin server checks separately).
#[derive(Clone, Default)]
pub struct Health {
    flags: Arc<Mutex<BTreeMap<&'static str, Arc<AtomicBool>>>>,
}

/// One part's say in readiness, e.g. "kafka" or "listener". Starts not ready.
#[derive(Clone)]
pub struct ReadinessFlag(Arc<AtomicBool>);

impl ReadinessFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Health {
    /// Registers (or returns the existing) flag named `part`.
    pub fn flag(&self, part: &'static str) -> ReadinessFlag {
        let mut flags = self.flags.lock().expect("health lock poisoned");
        ReadinessFlag(flags.entry(part).or_default().clone())
    }

    /// The parts not ready yet, in name order; empty means ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let flags = self.flags.lock().expect("health lock poisoned");
        flags
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_flag_is_set() {
        let health = Health::default();
        assert!(health.not_ready().is_empty(), "no parts means ready");
        let kafka = health.flag("kafka");
        let listener = health.flag("listener");
        assert_eq!(health.not_ready(), ["kafka", "listener"]);
        kafka.set(true);
        assert_eq!(health.not_ready(), ["listener"]);
        listener.set(true);
        assert!(health.not_ready().is_empty());
        health.flag("kafka").set(false);
        assert_eq!(health.not_ready(), ["kafka"], "same name, same flag");
    }
}
