use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Readiness of a process: the conjunction of named flags that its parts register.
///
/// A process is live as long as it answers; it is ready when every registered flag is set
/// (and it is not shutting down, which the admin server checks separately).
#[derive(Clone, Default)]
pub struct Health {
    flags: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
    /// Set in the view of one part of a process running several roles (`Health::scoped`).
    scope: Option<&'static str>,
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
    /// Registers (or returns the existing) flag named `part` (`SCOPE/part` in a scoped view).
    pub fn flag(&self, part: &'static str) -> ReadinessFlag {
        let name = match self.scope {
            Some(scope) => format!("{scope}/{part}"),
            None => part.to_string(),
        };
        let mut flags = self.flags.lock().expect("health lock poisoned");
        ReadinessFlag(flags.entry(name).or_default().clone())
    }

    /// The same readiness seen by one of several roles in one process (`strait-proxy dev`):
    /// its flags are named `scope/flag`, so two roles' flags of the same name stay apart, and
    /// all of them count for the process.
    pub fn scoped(&self, scope: &'static str) -> Health {
        Health {
            flags: self.flags.clone(),
            scope: Some(scope),
        }
    }

    /// The parts not ready yet, in name order; empty means ready. A scoped view lists only
    /// its own flags.
    pub fn not_ready(&self) -> Vec<String> {
        let prefix = self.scope.map(|scope| format!("{scope}/"));
        let flags = self.flags.lock().expect("health lock poisoned");
        flags
            .iter()
            .filter(|(name, _)| prefix.as_ref().is_none_or(|p| name.starts_with(p)))
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| name.clone())
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

    #[test]
    fn scoped_views_keep_their_flags_apart_and_count_for_the_process() {
        let health = Health::default();
        let one = health.scoped("one");
        let two = health.scoped("two");
        let one_kafka = one.flag("kafka");
        two.flag("kafka");
        assert_eq!(health.not_ready(), ["one/kafka", "two/kafka"]);
        one_kafka.set(true);
        assert!(one.not_ready().is_empty(), "a view sees only its own flags");
        assert_eq!(two.not_ready(), ["two/kafka"]);
        assert_eq!(health.not_ready(), ["two/kafka"]);
        two.flag("kafka").set(true);
        assert!(health.not_ready().is_empty());
    }
}
