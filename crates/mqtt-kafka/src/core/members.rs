//! The members of one shared subscription on this replica, taking turns: each record goes to
//! the next member whose queue has room, so a slow member does not hold up the group and the
//! others share the load evenly.

/// Session ids of the members, in joining order, and whose turn is next.
#[derive(Debug, Default)]
pub struct Members {
    ids: Vec<u64>,
    turn: usize,
}

impl Members {
    pub fn join(&mut self, id: u64) {
        self.ids.push(id);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Removes a member; `true` when none is left (the group consumer stops).
    pub fn leave(&mut self, id: u64) -> bool {
        self.ids.retain(|m| *m != id);
        self.ids.is_empty()
    }

    /// Offers a record to each member once, starting with the one whose turn it is, until
    /// `take` accepts it (the member's queue had room); the member after it is next. `None`
    /// when every member refused (all full: the group waits, or drops a QoS 0 record).
    pub fn hand_out(&mut self, mut take: impl FnMut(u64) -> bool) -> Option<u64> {
        let count = self.ids.len();
        for _ in 0..count {
            let id = self.ids[self.turn % count];
            self.turn = self.turn.wrapping_add(1);
            if take(id) {
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_take_turns_and_a_full_one_is_skipped() {
        let mut members = Members::default();
        for id in [1, 2, 3] {
            members.join(id);
        }
        let all = |_| true;
        let order: Vec<_> = (0..4).map(|_| members.hand_out(all).unwrap()).collect();
        assert_eq!(order, [1, 2, 3, 1]);
        // 3 is full: its turn passes to 1.
        let not_3 = |id| id != 3;
        assert_eq!(members.hand_out(not_3), Some(2));
        assert_eq!(members.hand_out(not_3), Some(1));
        // Everyone full: nobody takes it, and each was asked once.
        let mut asked = Vec::new();
        assert_eq!(
            members.hand_out(|id| {
                asked.push(id);
                false
            }),
            None
        );
        asked.sort_unstable();
        assert_eq!(asked, [1, 2, 3]);
    }

    #[test]
    fn a_member_that_leaves_gets_nothing_more_and_the_last_one_ends_the_group() {
        let mut members = Members::default();
        members.join(1);
        members.join(2);
        assert!(!members.leave(1));
        assert_eq!(members.hand_out(|_| true), Some(2));
        assert_eq!(members.hand_out(|_| true), Some(2));
        assert!(members.leave(2), "no member left");
        assert_eq!(members.hand_out(|_| true), None);
    }
}
