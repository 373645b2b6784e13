//! The order in which the upstream's shared state is locked, written down here and checked in
//! debug builds (every test run): a thread that takes a lock at or below a level it already
//! holds panics, naming both, instead of risking a deadlock that shows only under load.
//!
//! The upstream's state is shared by the dispatcher thread, the shared groups' consumer
//! threads, the table readers and every session task. Outer to inner:
//!
//! 1. [`Level::Subscriptions`]: the subscription trie (`KafkaUpstream::subscriptions`).
//!    Removing a session's subscriptions leaves its shared groups while holding it.
//! 2. [`Level::SharedGroups`]: the shared subscriptions' members (`KafkaUpstream::shared`).
//!    Handing a shared record out reads the inboxes while holding it.
//! 3. [`Level::Inboxes`]: the sessions' inboxes by id (`KafkaUpstream::inboxes`). The
//!    dispatcher and the shared groups push into an inbox while holding it.
//! 4. [`Level::Inbox`]: one session's queue (`Inbox::state`).
//! 5. [`Level::Leaf`]: locks under which no other lock is taken: the messages topics, the
//!    local sessions (takeover), the delayed wills, a table's entries, a shared group's
//!    delivery progress.
//!
//! Release builds only lock; the check costs a thread-local access per lock in debug builds.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Where a lock stands in the order: a thread may only take locks of a higher level than those
/// it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Subscriptions = 1,
    SharedGroups = 2,
    Inboxes = 3,
    Inbox = 4,
    Leaf = 5,
}

#[cfg(debug_assertions)]
thread_local! {
    static HELD: std::cell::RefCell<Vec<Level>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn acquire(level: Level, name: &'static str) {
    #[cfg(debug_assertions)]
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if let Some(highest) = held.iter().max() {
            assert!(
                level > *highest,
                "lock order violated: taking {name} ({level:?}) while holding {highest:?} \
                 (see io/lock_order.rs)"
            );
        }
        held.push(level);
    });
    #[cfg(not(debug_assertions))]
    let _ = (level, name);
}

fn release(level: Level) {
    #[cfg(debug_assertions)]
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if let Some(at) = held.iter().rposition(|l| *l == level) {
            held.remove(at);
        }
    });
    #[cfg(not(debug_assertions))]
    let _ = level;
}

/// A lock guard that records its level while held.
pub(crate) struct Held<G> {
    guard: G,
    level: Level,
}

impl<G> Held<G> {
    fn new(level: Level, name: &'static str, take: impl FnOnce() -> G) -> Self {
        acquire(level, name);
        Self {
            guard: take(),
            level,
        }
    }
}

impl<G> Drop for Held<G> {
    fn drop(&mut self) {
        release(self.level);
    }
}

impl<G: Deref> Deref for Held<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Held<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// A `Mutex` with its place in the lock order. A poisoned lock (a thread panicked holding it)
/// is a bug: taking it panics, naming it.
#[derive(Debug)]
pub(crate) struct OrderedMutex<T> {
    level: Level,
    name: &'static str,
    inner: Mutex<T>,
}

impl<T> OrderedMutex<T> {
    pub(crate) const fn new(level: Level, name: &'static str, value: T) -> Self {
        Self {
            level,
            name,
            inner: Mutex::new(value),
        }
    }

    pub(crate) fn lock(&self) -> Held<MutexGuard<'_, T>> {
        Held::new(self.level, self.name, || {
            self.inner.lock().expect(self.name)
        })
    }
}

/// An `RwLock` with its place in the lock order.
#[derive(Debug)]
pub(crate) struct OrderedRwLock<T> {
    level: Level,
    name: &'static str,
    inner: RwLock<T>,
}

impl<T> OrderedRwLock<T> {
    pub(crate) const fn new(level: Level, name: &'static str, value: T) -> Self {
        Self {
            level,
            name,
            inner: RwLock::new(value),
        }
    }

    pub(crate) fn read(&self) -> Held<RwLockReadGuard<'_, T>> {
        Held::new(self.level, self.name, || {
            self.inner.read().expect(self.name)
        })
    }

    pub(crate) fn write(&self) -> Held<RwLockWriteGuard<'_, T>> {
        Held::new(self.level, self.name, || {
            self.inner.write().expect(self.name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_outer_to_inner_pass() {
        let trie = OrderedRwLock::new(Level::Subscriptions, "trie", ());
        let groups = OrderedMutex::new(Level::SharedGroups, "shared groups", ());
        let inboxes = OrderedRwLock::new(Level::Inboxes, "inboxes", ());
        let inbox = OrderedMutex::new(Level::Inbox, "inbox", ());
        let leaf = OrderedMutex::new(Level::Leaf, "leaf", ());
        {
            let _t = trie.write();
            let _g = groups.lock();
            let _i = inboxes.read();
            let _q = inbox.lock();
            let _l = leaf.lock();
        }
        // Released in any order, the levels can be taken again.
        let t = trie.read();
        let i = inboxes.read();
        drop(t);
        drop(i);
        let _g = groups.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(
        expected = "lock order violated: taking trie (Subscriptions) while holding Inboxes"
    )]
    fn taking_an_outer_lock_inside_an_inner_one_panics_in_debug_builds() {
        let trie = OrderedRwLock::new(Level::Subscriptions, "trie", ());
        let inboxes = OrderedRwLock::new(Level::Inboxes, "inboxes", ());
        let _i = inboxes.read();
        let _t = trie.write();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated")]
    fn leaves_do_not_nest() {
        let a = OrderedMutex::new(Level::Leaf, "a", ());
        let b = OrderedMutex::new(Level::Leaf, "b", ());
        let _a = a.lock();
        let _b = b.lock();
    }
}
