//! A QoS 2 PUBLISH from the client is written to Kafka at most once, across duplicates,
//! reconnects, takeovers and crashes. Three facts in the session record make it so:
//!
//! 1. before a persistent session writes the record, it stores its *intent*: the messages
//!    topic, partition and that partition's end offset before the write;
//! 2. once Kafka has the record, it stores the packet id as *written* (and drops the intent),
//!    then sends PUBREC;
//! 3. PUBREL releases the id.
//!
//! A resent PUBLISH whose id is written is acknowledged again; one with an intent (the session
//! crashed between the record and the state) is looked for in the partition from the stored
//! offset, and only written if it is not there. The driver (`io::session`) does the writes and
//! the search; these types decide.

use std::collections::HashMap;

use crate::core::flows::Inbound;
use crate::core::state::StoredPending;

/// Where a QoS 2 PUBLISH is being written: its messages topic, partition, and the partition's
/// end offset before the write (the record, if it arrived, is at or after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
}

/// What to do with a QoS 2 PUBLISH from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qos2Publish {
    /// Written already (a duplicate, or a resend after a reconnect): PUBREC again, no write.
    Acknowledge,
    /// An earlier attempt may have reached Kafka before a crash: look for its record from
    /// `Intent::from`; found, PUBREC without writing; not found, write it as new.
    LookFor(Intent),
    /// New: write it (a persistent session stores its intent first).
    Write,
}

/// What Kafka's answer to a QoS 2 write comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Qos2Written {
    /// Send PUBREC now (with Kafka's reason; an error ends the flow).
    PubRec,
    /// Store the session record first (the id is now written), then PUBREC. If the store
    /// fails, [`Intents::undo`] puts things back and the session ends without PUBREC.
    StoreThenPubRec(Undo),
}

/// How to take back a written id whose store failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Undo {
    packet_id: u16,
    intent: Option<Intent>,
}

/// The intents of QoS 2 PUBLISHes being written, by packet id.
#[derive(Debug, Default)]
pub struct Intents {
    pending: HashMap<u16, Intent>,
}

impl Intents {
    /// The intents of a stored session.
    pub fn restore(stored: &[StoredPending]) -> Self {
        let pending = stored
            .iter()
            .map(|p| {
                let intent = Intent {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    from: p.from,
                };
                (p.packet_id, intent)
            })
            .collect();
        Self { pending }
    }

    /// The intents as stored in the session record, by packet id.
    pub fn stored(&self) -> Vec<StoredPending> {
        let mut stored: Vec<StoredPending> = self
            .pending
            .iter()
            .map(|(packet_id, intent)| StoredPending {
                packet_id: *packet_id,
                topic: intent.topic.clone(),
                partition: intent.partition,
                from: intent.from,
            })
            .collect();
        stored.sort_by_key(|p| p.packet_id);
        stored
    }

    /// What a QoS 2 PUBLISH with `packet_id` gets, given what the session knows.
    pub fn decide(&self, inbound: &Inbound, packet_id: u16) -> Qos2Publish {
        if inbound.is_written(packet_id) {
            return Qos2Publish::Acknowledge;
        }
        match self.pending.get(&packet_id) {
            Some(intent) => Qos2Publish::LookFor(intent.clone()),
            None => Qos2Publish::Write,
        }
    }

    /// The write of `packet_id` is about to start: the session record must hold this before
    /// the record is produced.
    pub fn intend(&mut self, packet_id: u16, intent: Intent) {
        self.pending.insert(packet_id, intent);
    }

    /// Kafka answered the write of `packet_id` (or a resend was found written, `accepted`).
    /// `persistent`: the session outlives its connection, so the written id must be stored
    /// before PUBREC or a resend to another replica would be written twice.
    pub fn answered(
        &mut self,
        inbound: &mut Inbound,
        packet_id: u16,
        accepted: bool,
        persistent: bool,
    ) -> Qos2Written {
        let intent = self.pending.remove(&packet_id);
        if !accepted {
            // Refused: the QoS 2 flow ends here, no PUBREL follows.
            inbound.answered(packet_id);
            return Qos2Written::PubRec;
        }
        if inbound.written(packet_id) && persistent {
            return Qos2Written::StoreThenPubRec(Undo { packet_id, intent });
        }
        Qos2Written::PubRec
    }

    /// Storing the written id failed: it is not written as far as a resend knows, and the
    /// intent is what lets that resend find the record, so the session's last record keeps it.
    pub fn undo(&mut self, inbound: &mut Inbound, undo: Undo) {
        inbound.unwritten(undo.packet_id);
        if let Some(intent) = undo.intent {
            self.pending.insert(undo.packet_id, intent);
        }
    }
}

#[cfg(test)]
mod tests;
