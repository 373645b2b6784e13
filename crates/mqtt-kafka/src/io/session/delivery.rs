//! Delivering to the client: SUBSCRIBE (and the retained messages after it), records from the
//! inbox or the catch-up turned into PUBLISHes within the client's window, acknowledgements.

use super::*;

impl Session {
    pub(super) async fn subscribe(&mut self, subscribe: mqtt::Subscribe) -> Option<End> {
        let subscription_id = subscribe.properties.subscription_identifier;
        let mut reason_codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained_for = Vec::new();
        // What this SUBSCRIBE changed, to undo if it cannot be stored: (filter, the
        // subscription it replaced).
        let mut changed: Vec<(String, Option<StoredSubscription>)> = Vec::new();
        for (position, sub) in subscribe.subscriptions.iter().enumerate() {
            let shared = match subscriptions::check(sub) {
                Ok(Checked::Accepted { shared }) => shared,
                Ok(Checked::Refused(code)) => {
                    reason_codes.push(code);
                    continue;
                }
                Err(violation) => return Some(End::Server(violation.reason, violation.detail)),
            };
            let new = !self.subscriptions.contains_key(&sub.filter);
            let quota =
                limits::subscribe_quota(&self.up.config.limits, position, new, shared, self.held());
            let joined = match quota {
                Ok(()) if new => self.up.subscribe(self.id, &sub.filter),
                Ok(()) => Ok(None),
                Err(limit) => Err(limit),
            };
            let ready = match joined {
                Ok(ready) => ready,
                Err(limit) => {
                    tracing::debug!(
                        filter = sub.filter,
                        limit = limit.label(),
                        "subscription refused: limit reached"
                    );
                    self.up.metrics.limit_hit(limit);
                    reason_codes.push(ReasonCode::QUOTA_EXCEEDED);
                    continue;
                }
            };
            let stored = StoredSubscription::new(sub, subscription_id);
            let replaced = self.subscriptions.insert(sub.filter.clone(), stored);
            changed.push((sub.filter.clone(), replaced));
            if let Some(mut ready) = ready {
                // SUBACK once the group consumer reads: nothing published after it is missed.
                let joined = tokio::time::timeout(SYNC_DEADLINE, ready.wait_for(|r| *r)).await;
                if !matches!(joined, Ok(Ok(_))) {
                    tracing::warn!(
                        filter = sub.filter,
                        "shared subscription consumer not ready"
                    );
                }
            }
            if subscriptions::sends_retained(shared, sub.options.retain_handling, new) {
                retained_for.push(sub.filter.clone());
            }
            reason_codes.push(ReasonCode(sub.options.qos as u8));
        }
        if self.expiry > 0
            && !changed.is_empty()
            && let Err(error) = self.write_record(None).await
        {
            tracing::warn!(
                error = crate::error_chain(&error),
                "cannot store the subscription"
            );
            // The SUBACK says failure: the subscriptions must not stay active either.
            for (filter, replaced) in changed {
                match replaced {
                    Some(previous) => {
                        self.subscriptions.insert(filter, previous);
                    }
                    None => {
                        self.subscriptions.remove(&filter);
                        self.up.unsubscribe(self.id, &filter);
                    }
                }
            }
            for code in reason_codes.iter_mut().filter(|c| !c.is_error()) {
                *code = ReasonCode::UNSPECIFIED_ERROR;
            }
            retained_for.clear();
        }
        subscriptions::suback_codes(self.protocol, &mut reason_codes);
        self.out.push(
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reason_codes,
                ..Default::default()
            })
            .into(),
        );
        if !retained_for.is_empty() {
            if let Err(error) = self.up.retained.sync(SYNC_DEADLINE).await {
                tracing::warn!(
                    error = crate::error_chain(&error),
                    "retained messages not read"
                );
            }
            for filter in retained_for {
                // A filter subscribed again restarts its retained messages, never adds a
                // second stream: at most one cursor per subscription.
                self.retained_due.retain(|due| due.filter != filter);
                self.retained_due.push_back(RetainedDue::new(filter));
            }
        }
        None
    }

    /// What the session holds, for the limits of a SUBSCRIBE.
    fn held(&self) -> limits::Held {
        limits::Held {
            subscriptions: self.subscriptions.len(),
            shared: self
                .subscriptions
                .keys()
                .filter(|f| mqtt::topic::parse_shared(f).is_some())
                .count(),
        }
    }

    /// The PUBLISH this subscriber gets (see [`subscriptions::to_publish`]).
    pub(super) fn to_publish(
        &self,
        message: &Message,
        timestamp_ms: i64,
        now_ms: i64,
        matching: &[&StoredSubscription],
    ) -> Option<Publish> {
        subscriptions::to_publish(&self.client_id, message, timestamp_ms, now_ms, matching)
    }

    /// Sends a delivery from the dispatcher or the catch-up.
    pub(super) fn deliver(&mut self, delivery: &Arc<Delivery>, from_catch_up: bool) {
        if delivery.shared.is_some() {
            return self.deliver_shared(delivery);
        }
        let key = (delivery.topic, delivery.partition);
        if !from_catch_up && self.catch_ups.skips_live(key, delivery.offset) {
            return;
        }
        if from_catch_up && delivery.message.qos == QoS::AtMostOnce {
            return;
        }
        // Records from the dispatcher or a catch-up are for the plain subscriptions (shared
        // ones, whose records other members may have had, are not caught up).
        let matching = self.matching(&delivery.message.topic, false);
        if matching.is_empty() {
            return;
        }
        let Some(publish) = self.to_publish(
            &delivery.message,
            delivery.timestamp_ms,
            now_ms(),
            &matching,
        ) else {
            return;
        };
        let source = (delivery.topic, delivery.partition, delivery.offset);
        let mut publish = publish;
        match self.qos2.redeliver(source, from_catch_up, publish.qos) {
            Redeliver::Skip => {}
            Redeliver::Send { packet_id, dup } => {
                publish.dup |= dup;
                self.send_publish_as(publish, Some(source), packet_id, None);
            }
        }
    }

    /// The subscriptions, shared or plain, whose filter matches `topic`.
    pub(super) fn matching(&self, topic: &str, shared: bool) -> Vec<&StoredSubscription> {
        self.subscriptions
            .values()
            .filter(|s| match mqtt::topic::parse_shared(&s.filter) {
                Some((_, inner)) => shared && mqtt::topic::matches(inner, topic),
                None => !shared && mqtt::topic::matches(&s.filter, topic),
            })
            .collect()
    }

    /// Sends a record a shared subscription's group consumer gave this member. It is not part
    /// of the session's progress: the group commits its offset once it is delivered.
    pub(super) fn deliver_shared(&mut self, delivery: &Arc<Delivery>) {
        let matching = self.matching(&delivery.message.topic, true);
        if matching.is_empty() {
            // Unsubscribed meanwhile: another member delivers it.
            delivery.clone().give_back();
            return;
        }
        match self.to_publish(
            &delivery.message,
            delivery.timestamp_ms,
            now_ms(),
            &matching,
        ) {
            Some(publish) => self.send_publish_as(publish, None, None, Some(delivery.clone())),
            // Expired: nobody gets it.
            None => delivery.delivered(),
        }
    }

    pub(super) fn send_publish(&mut self, publish: Publish, source: Option<(usize, i32, i64)>) {
        self.send_publish_as(publish, source, None, None);
    }

    /// Sends a PUBLISH; `packet_id` reuses a stored one (a QoS 2 resend); `shared` is the
    /// shared subscription's record it carries.
    pub(super) fn send_publish_as(
        &mut self,
        publish: Publish,
        source: Option<(usize, i32, i64)>,
        packet_id: Option<u16>,
        shared: Option<Arc<Delivery>>,
    ) {
        let qos2_from_kafka = publish.qos == QoS::ExactlyOnce && source.is_some();
        let qos2 = &self.qos2;
        let reserved = |id| qos2.reserved(id);
        match self
            .outbound
            .send(publish, source, packet_id, shared, reserved)
        {
            Sent::TooLarge(shared) => {
                // The client cannot take it: as if delivered (MQTT-3.1.2-25).
                if let Some(shared) = shared {
                    shared.delivered();
                }
            }
            Sent::Publish { publish, delivered } => {
                if let Some(shared) = delivered {
                    // QoS 0: sent is delivered.
                    shared.delivered();
                }
                if qos2_from_kafka {
                    self.qos2_dirty = true;
                }
                self.up.metrics.delivered(publish.qos);
                self.out.push(Packet::Publish(*publish).into());
            }
        }
    }

    /// What an acknowledgement from the client settles: a shared record delivered, delivery
    /// progress moved, a QoS 2 offset done (stored before the client sees more), PUBREL due.
    pub(super) fn acknowledged(&mut self, acked: Acked<Arc<Delivery>>) {
        if let Some(shared) = &acked.shared {
            shared.delivered();
        }
        self.acked_since_write |= acked.from_kafka;
        if let Some(source) = acked.released {
            self.qos2.released(source);
            self.qos2_dirty = true;
        }
        if let Some(rel) = acked.reply {
            self.out.push(Packet::PubRel(rel).into());
        }
    }

    /// Sends retained messages due after SUBACKs while the client's window has room, read one
    /// at a time from the retained table: a session holds a cursor per filter, never a copy.
    pub(super) fn fill_window(&mut self) {
        while self.outbound.has_room() {
            let Some(due) = self.retained_due.front_mut() else {
                break;
            };
            let filter = due.filter.as_str();
            let next = self
                .up
                .retained
                .next_after(due.after.as_deref(), &due.prefix, |topic| {
                    mqtt::topic::matches(filter, topic)
                });
            let Some((topic, entry)) = next else {
                self.retained_due.pop_front();
                continue;
            };
            due.after = Some(topic.clone());
            // Unsubscribed meanwhile: nothing more for this filter.
            let Some(sub) = self.subscriptions.get(filter) else {
                self.retained_due.pop_front();
                continue;
            };
            let message = match headers::decode(
                Some(topic.as_bytes()),
                entry.value.clone(),
                entry
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_slice())),
            ) {
                Ok(message) => message,
                Err(error) => {
                    // The table keeps the latest record per key, not where it was read.
                    let retained = &self.up.config.topics.retained;
                    self.up.metrics.record_skipped(&error, retained, -1, -1);
                    continue;
                }
            };
            if let Some(mut publish) =
                self.to_publish(&message, entry.timestamp_ms, now_ms(), &[sub])
            {
                publish.retain = true;
                self.send_publish(publish, None);
            }
        }
    }

    pub(super) fn drain_inbox(&mut self) {
        while self.outbound.has_room() && self.out.len() < 256 {
            let Some(delivery) = self.inbox.state.lock().items.pop_front() else {
                break;
            };
            self.deliver(&delivery, false);
        }
        if !self.inbox.state.lock().items.is_empty() && self.outbound.has_room() {
            // More to do: come back on the next turn.
            self.inbox.notify.notify_one();
        }
    }

    /// Shared subscriptions' records this session holds undelivered (unacknowledged or still
    /// queued) go to other members (MQTT 4.8.2): the group only commits delivered ones.
    pub(super) fn give_back_shared(&mut self) {
        for shared in self.outbound.take_shared() {
            shared.give_back();
        }
        let queued = std::mem::take(&mut self.inbox.state.lock().items);
        for delivery in queued {
            delivery.give_back();
        }
    }
}

/// The retained messages of one filter still to send after its SUBACK: a cursor into the
/// retained table.
pub(super) struct RetainedDue {
    filter: String,
    /// Every topic the filter matches starts with this (the levels before its first
    /// wildcard), so the scan starts there.
    prefix: String,
    /// The last topic sent.
    after: Option<String>,
}

impl RetainedDue {
    pub(super) fn new(filter: String) -> Self {
        let literal = filter
            .find(['+', '#'])
            .map_or(filter.as_str(), |i| &filter[..i]);
        // `a/#` also matches `a` itself.
        let prefix = literal.strip_suffix('/').unwrap_or(literal).to_string();
        Self {
            filter,
            prefix,
            after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RetainedDue;

    #[test]
    fn a_retained_scan_starts_at_the_filters_literal_levels() {
        let prefix = |f: &str| RetainedDue::new(f.into()).prefix;
        assert_eq!(prefix("a/b/+/c"), "a/b");
        assert_eq!(prefix("a/#"), "a", "a/# matches a itself");
        assert_eq!(prefix("#"), "");
        assert_eq!(prefix("a/b"), "a/b");
    }
}
