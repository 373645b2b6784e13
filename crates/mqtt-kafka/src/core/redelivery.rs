//! QoS 2 deliveries to the client across reconnects: the session record keeps the ones not
//! completed (`qos2Out`) and the offsets completed or released above the stored progress
//! (`qos2Done`), stored before the client sees the PUBLISH or PUBREL. A resumed session sends
//! PUBREL again for released ones, resends unreleased ones with their packet id and DUP when
//! its catch-up reads them again, and never delivers a done one twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use strait_mqtt_codec::QoS;

use crate::core::flows::{Outbound, Source};
use crate::core::queue::Partition;
use crate::core::state::{SessionRecord, StoredOutgoing};

/// What a record read again (by a catch-up, or live) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeliver {
    /// Its QoS 2 delivery was completed or released: not again.
    Skip,
    /// Send it; `packet_id`: the stored one of an unreleased QoS 2 delivery, with DUP.
    Send { packet_id: Option<u16>, dup: bool },
}

/// A session's QoS 2 deliveries as far as a reconnect goes.
#[derive(Debug, Default)]
pub struct Qos2Deliveries {
    /// Restored unreleased deliveries, resent with their packet id when read again.
    resend: HashMap<Source, u16>,
    /// Offsets of completed or released deliveries at or above the stored progress.
    done: HashMap<Partition, BTreeSet<i64>>,
}

impl Qos2Deliveries {
    /// Takes back a stored session's QoS 2 deliveries: released ones go in flight again
    /// (their PUBREL is due: the returned packet ids, in order) and count as done; the others
    /// wait for the catch-up. `index` names a messages topic's index (`None`: a topic no
    /// longer served, forgotten).
    pub fn restore<T>(
        record: &SessionRecord,
        index: impl Fn(&str) -> Option<usize>,
        outbound: &mut Outbound<T>,
    ) -> (Self, Vec<u16>) {
        let mut restored = Self::default();
        for (topic, partitions) in &record.qos2_done {
            let Some(t) = index(topic) else { continue };
            for (p, offsets) in partitions {
                let done = restored.done.entry((t, *p)).or_default();
                done.extend(offsets.iter().copied());
            }
        }
        let mut pubrels = Vec::new();
        for out in &record.qos2_out {
            let Some(t) = index(&out.topic) else { continue };
            let source = (t, out.partition, out.offset);
            if out.released {
                outbound.restore_released(out.packet_id, source);
                restored.released(source);
                pubrels.push(out.packet_id);
            } else {
                restored.resend.insert(source, out.packet_id);
            }
        }
        (restored, pubrels)
    }

    /// A record from `source` is about to be sent as a PUBLISH of `qos`.
    pub fn redeliver(&mut self, source: Source, from_catch_up: bool, qos: QoS) -> Redeliver {
        let (t, p, offset) = source;
        if from_catch_up && self.done.get(&(t, p)).is_some_and(|d| d.contains(&offset)) {
            return Redeliver::Skip;
        }
        let packet_id = self.resend.remove(&source);
        Redeliver::Send {
            packet_id,
            dup: packet_id.is_some() && qos == QoS::ExactlyOnce,
        }
    }

    /// Whether `packet_id` is kept for a resend (never handed to another message).
    pub fn reserved(&self, packet_id: u16) -> bool {
        self.resend.values().any(|id| *id == packet_id)
    }

    /// The client sent PUBREC for the delivery from `source`: done, never delivered again.
    pub fn released(&mut self, source: Source) {
        let (t, p, offset) = source;
        self.done.entry((t, p)).or_default().insert(offset);
    }

    /// The offsets still owed a resend, which hold the progress back.
    pub fn owed(&self) -> impl Iterator<Item = &Source> {
        self.resend.keys()
    }

    /// The restored deliveries not resent yet, for the session record (with the ones in
    /// flight; `name` names a topic index).
    pub fn stored_resends(&self, name: impl Fn(usize) -> String) -> Vec<StoredOutgoing> {
        self.resend
            .iter()
            .map(|((t, p, offset), id)| StoredOutgoing {
                packet_id: *id,
                topic: name(*t),
                partition: *p,
                offset: *offset,
                released: false,
            })
            .collect()
    }

    /// The done offsets at or above the `progress` of each partition, for the session record
    /// (those below are covered by the progress).
    pub fn stored_done(
        &self,
        progress: impl Fn(Partition) -> i64,
    ) -> BTreeMap<Partition, Vec<i64>> {
        self.done
            .iter()
            .filter_map(|(partition, done)| {
                let kept: Vec<i64> = done.range(progress(*partition)..).copied().collect();
                (!kept.is_empty()).then_some((*partition, kept))
            })
            .collect()
    }

    /// Forgets done offsets below the stored `progress`: it covers them.
    pub fn prune(&mut self, progress: impl Fn(Partition) -> i64) {
        for (partition, done) in &mut self.done {
            let from = progress(*partition);
            done.retain(|offset| *offset >= from);
        }
        self.done.retain(|_, done| !done.is_empty());
    }
}

#[cfg(test)]
mod tests;
