//! The session record in the sessions topic: written on CONNECT, SUBSCRIBE, QoS 2 state and
//! progress; QoS 2 intents that make a resent PUBLISH written at most once.

use super::*;
use crate::io::table::TableEntry;

impl Session {
    /// Before a QoS 2 PUBLISH of a persistent session is written: if it is a resend of one
    /// whose write may have reached Kafka before a crash (`step`, see [`Intents::decide`]),
    /// look for it (`Ok(true)`: it is there); otherwise store where it goes and the
    /// partition's end offset first.
    pub(super) async fn qos2_intent(
        &mut self,
        publish: &Publish,
        step: Qos2Publish,
    ) -> Result<bool, UpstreamError> {
        let (messages, Some(partition)) = self.up.target(&publish.topic) else {
            return Ok(false);
        };
        if self.expiry == 0 {
            return Ok(false);
        }
        if let Some(earlier) = self
            .up
            .qos2_write_in_flight(&self.client_id, publish.packet_id)
        {
            // An earlier connection's attempt is still on its way to Kafka from this process
            // (the session ended while Kafka was slow or away): its outcome decides, or the
            // search below would miss a record that lands a moment later.
            if earlier.await.is_ok() {
                return Ok(true);
            }
        }
        if let Qos2Publish::LookFor(Intent {
            topic,
            partition: p,
            from,
        }) = step
        {
            let clients = self.up.clients.clone();
            let end = self.up.end_offset(&topic, p).await?;
            let (key, payload, client) = (
                publish.topic.clone(),
                publish.payload.clone(),
                self.client_id.clone(),
            );
            // A reader of its own, like a catch-up's: it waits for one of theirs.
            let reader = self.up.catch_up_readers.clone().acquire_owned().await;
            let found = tokio::task::spawn_blocking(move || {
                let _reader = reader;
                find_written(&clients, &topic, p, from, end, &key, &payload, &client)
            })
            .await??;
            if let Some(written_at_ms) = found {
                if publish.retain {
                    self.restore_retained(publish, written_at_ms).await?;
                }
                return Ok(true);
            }
        }
        let from = self.up.end_offset(&messages, partition).await?;
        let intent = Intent {
            topic: messages,
            partition,
            from,
        };
        self.intents.intend(publish.packet_id, intent);
        self.write_record(None).await?;
        Ok(false)
    }

    /// The first attempt of a RETAIN QoS 2 PUBLISH reached the messages topic before a crash;
    /// its retained record, written after it, may not have. Written again unless the retained
    /// topic holds it, or something newer, already.
    async fn restore_retained(
        &self,
        publish: &Publish,
        written_at_ms: i64,
    ) -> Result<(), UpstreamError> {
        self.up.retained.sync(SYNC_DEADLINE).await?;
        let current = self.up.retained.get(&publish.topic);
        if retained_is_missing(current.as_ref(), &publish.payload, written_at_ms) {
            tracing::info!(topic = %publish.topic, "restoring a retained message a crash interrupted");
            super::writes::produce_retained(&self.up, publish, &self.client_id)
                .await
                .map_err(|reason| {
                    UpstreamError::Topic(format!(
                        "retained message not restored: {}",
                        reason.name()
                    ))
                })?;
        }
        Ok(())
    }

    pub(super) fn stored_qos2_out(&self) -> Vec<StoredOutgoing> {
        let mut stored: Vec<StoredOutgoing> = self
            .outbound
            .in_flight()
            .filter(|(_, o)| o.qos == QoS::ExactlyOnce)
            .filter_map(|(id, o)| {
                let (t, p, offset) = o.source?;
                Some(StoredOutgoing {
                    packet_id: *id,
                    topic: self.up.topics.name(t),
                    partition: p,
                    offset,
                    released: o.released,
                })
            })
            .collect();
        stored.extend(self.qos2.stored_resends(|t| self.up.topics.name(t)));
        stored.sort_by_key(|o| o.packet_id);
        stored
    }

    /// Takes back the QoS 2 delivery state of a resumed session: PUBREL again for released
    /// ones, the same packet id (DUP) for the others when the catch-up reads them.
    pub(super) fn restore_qos2(&mut self, record: &SessionRecord) {
        let index = |topic: &str| self.up.topics.index(topic);
        let (restored, pubrels) = Qos2Deliveries::restore(record, index, &mut self.outbound);
        self.qos2 = restored;
        for packet_id in pubrels {
            self.out.push(
                Packet::PubRel(PubRel {
                    packet_id,
                    ..Default::default()
                })
                .into(),
            );
        }
    }

    pub(super) fn record(&self, disconnected_at_ms: Option<i64>) -> SessionRecord {
        let qos2 = self.inbound.qos2_received();
        let mut record = SessionRecord {
            version: VERSION,
            owner: self.up.instance.clone(),
            connection: self.connection.clone(),
            connected_at_ms: self.connected_at_ms,
            disconnected_at_ms,
            expiry: self.expiry,
            subscriptions: self.subscriptions.values().cloned().collect(),
            offsets: self.progress(),
            qos2_received: qos2,
            will: self.will.as_ref().map(StoredWill::from_will),
            qos2_out: self.stored_qos2_out(),
            qos2_done: BTreeMap::new(),
            qos2_pending: self.intents.stored(),
        };
        // Completed deliveries below the progress are covered by it.
        let progress =
            |(t, p): (usize, i32)| stored_progress(&record.offsets, &self.up.topics.name(t), p);
        for ((t, p), kept) in self.qos2.stored_done(progress) {
            let topic = self.up.topics.name(t);
            record.qos2_done.entry(topic).or_default().insert(p, kept);
        }
        record
    }

    pub(super) async fn write_record(
        &mut self,
        disconnected_at_ms: Option<i64>,
    ) -> Result<(), UpstreamError> {
        let record = self.record(disconnected_at_ms);
        let offsets = record.offsets.clone();
        // Completed QoS 2 deliveries below the progress need no memory any more.
        let topics = &self.up.topics;
        self.qos2
            .prune(|(t, p)| stored_progress(&offsets, &topics.name(t), p));
        put_session(&self.up, &self.client_id, Some(record.encode())).await?;
        self.last_checkpoint = Some(offsets);
        self.last_write = std::time::Instant::now();
        self.acked_since_write = false;
        Ok(())
    }

    /// Stores delivery progress: within a second of acknowledgements (so a crash repeats
    /// little), otherwise at most every `IDLE_CHECKPOINT` (progress moving only because other
    /// clients' traffic passed needs no write per second per session).
    pub(super) async fn checkpoint(&mut self) -> Result<(), UpstreamError> {
        if !self.acked_since_write && self.last_write.elapsed() < IDLE_CHECKPOINT {
            return Ok(());
        }
        if self.last_checkpoint.as_ref() == Some(&self.progress()) {
            return Ok(());
        }
        self.write_record(None).await
    }
}

/// The stored progress of `topic`'s partition `p` (0 when the record has none).
fn stored_progress(offsets: &BTreeMap<String, BTreeMap<i32, i64>>, topic: &str, p: i32) -> i64 {
    offsets
        .get(topic)
        .and_then(|o| o.get(&p))
        .copied()
        .unwrap_or(0)
}

/// Writes (or with `None` deletes) a client's session record, acks=all.
pub(crate) async fn put_session(
    up: &KafkaUpstream,
    client_id: &str,
    value: Option<Vec<u8>>,
) -> Result<(), UpstreamError> {
    let mut record = FutureRecord::<str, [u8]>::to(&up.config.topics.sessions).key(client_id);
    if let Some(value) = &value {
        record = record.payload(value.as_slice());
    }
    match up.producer.send(record, Duration::from_secs(5)).await {
        Ok(_) => Ok(()),
        Err((error, _)) => Err(UpstreamError::SessionWrite {
            client_id: client_id.into(),
            error,
        }),
    }
}

/// Whether `topic`/`partition` holds, between `from` and `end`, the record of `client`'s PUBLISH
/// of `payload` to MQTT topic `key`.
#[allow(clippy::too_many_arguments)]
fn find_written(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    key: &str,
    payload: &[u8],
    publisher: &str,
) -> Result<Option<i64>, UpstreamError> {
    if from >= end {
        return Ok(None);
    }
    let consumer = clients.reader("QoS 2 resend check")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let every = Duration::from_millis(200);
    poll_loop(&consumer, "QoS 2 resend check", every, |polled| {
        if std::time::Instant::now() >= deadline {
            return ControlFlow::Break(Err(UpstreamError::Timeout(format!(
                "reading {topic}/{partition} from {from} to {end} took over 30 s"
            ))));
        }
        let Polled::Record(record) = polled else {
            return ControlFlow::Continue(());
        };
        if record.key() == Some(key.as_bytes())
            && record.payload().unwrap_or_default() == payload
            && has_header(&record, headers::LOCAL, publisher.as_bytes())
        {
            let at = record.timestamp().to_millis().unwrap_or(0);
            return ControlFlow::Break(Ok(Some(at)));
        }
        if record.offset() + 1 >= end {
            return ControlFlow::Break(Ok(None));
        }
        ControlFlow::Continue(())
    })
}

/// Whether a RETAIN message written at `written_at_ms` is missing from the retained topic,
/// which holds `current` for its topic: nothing there, or an older, different message.
fn retained_is_missing(current: Option<&TableEntry>, payload: &[u8], written_at_ms: i64) -> bool {
    match current {
        None => true,
        Some(entry) => entry.value != payload && entry.timestamp_ms < written_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &'static [u8], at: i64) -> TableEntry {
        TableEntry {
            value: Bytes::from_static(value),
            headers: Vec::new(),
            timestamp_ms: at,
        }
    }

    #[test]
    fn a_retained_message_is_rewritten_only_when_nothing_as_new_is_there() {
        assert!(retained_is_missing(None, b"on", 100));
        assert!(retained_is_missing(Some(&entry(b"off", 50)), b"on", 100));
        assert!(!retained_is_missing(Some(&entry(b"on", 100)), b"on", 100));
        assert!(
            !retained_is_missing(Some(&entry(b"off", 150)), b"on", 100),
            "a newer retained message stays"
        );
    }
}
