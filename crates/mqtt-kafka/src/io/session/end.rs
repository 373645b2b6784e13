//! The end of a session: the client told why, subscriptions and shared records given back, the
//! session record stored, the will published when and if due.

use super::*;

impl Session {
    /// `kicked` says whether a newer connection of the client took this one over (see
    /// `super::takeover_check`), maybe after the session had ended for its own reason.
    pub(super) async fn finish(
        mut self,
        end: End,
        kicked: &mut mpsc::Receiver<()>,
        to_client: &ToClient,
        metrics: &RelayMetrics,
    ) {
        let Finish {
            close,
            will: plan,
            store,
        } = ending::finish(self.will.as_ref(), &end, self.expiry);
        tracing::info!(reason = end.label(), "session ended");
        if self.qos2_dirty && self.expiry > 0 && self.write_record(None).await.is_err() {
            // The client must not see a QoS 2 PUBLISH or PUBREL whose state is not stored (see
            // `serve`): after a restart it would get the message again as a new one.
            self.out.clear();
        }
        if let Some((reason, detail)) = &close {
            if matches!(end, End::Server(..)) {
                metrics.error("session_error");
            }
            let frame = ServerFrame {
                packets: std::mem::take(&mut self.out),
                close: Some(v1::SessionClose {
                    reason_code: reason.0.into(),
                    detail: detail.clone(),
                }),
            };
            let _ = to_client.send(Ok(frame)).await;
        }
        self.up
            .unregister(self.id, self.subscriptions.keys().cloned());
        self.give_back_shared();
        let will = self.will.take().filter(|_| plan != WillPlan::None);
        if store == Store::Nothing {
            // Taken over (see `ending::finish`) from another replica, the client's entry here is ours to remove (one
            // taken over here already names the new connection, and stays).
            forget_local(&self.up, &self.client_id, &self.connection);
            // The new connection owns the session record now; a will without delay is
            // published, one with a delay is cancelled (see `will_plan`).
            if let Some(will) = will {
                let delivery = produce(&self.up, &will_publish(&will), &self.client_id);
                tokio::spawn(async move {
                    if let Err(reason) = delivery.await {
                        tracing::warn!(reason = reason.name(), "will not published");
                    }
                });
            }
            return;
        }
        let mut ownership = Ownership::new(self.connection.clone(), self.connected_at_ms);
        // Watched from before the record is read and the local entry forgotten: every newer
        // claim from then on reaches the will, every earlier one kicked this connection.
        if will.is_some() && matches!(plan, WillPlan::After(_)) {
            wait_for_reconnects(&self.up, &self.client_id, ownership.clone());
        }
        let current = self.up.sessions.get(&self.client_id);
        forget_local(&self.up, &self.client_id, &self.connection);
        if kicked.try_recv().is_ok() {
            ownership.replace();
        }
        let stored = match store {
            Store::Disconnected => Some(self.record(Some(now_ms())).encode()),
            Store::Delete | Store::Nothing => None,
        };
        // A newer connection (maybe on another replica) may own the record by now, or have
        // deleted it.
        if !ownership.still_ours(current.as_ref().map(|e| &e.value[..])) {
            tracing::debug!("session record already taken over; not writing the end");
        } else if let Err(error) = put_session(&self.up, &self.client_id, stored).await {
            tracing::warn!(
                error = crate::error_chain(&error),
                "cannot store the session's end"
            );
        }
        if let Some(will) = will {
            let delay = match plan {
                WillPlan::After(delay) => delay,
                WillPlan::Now | WillPlan::None => 0,
            };
            let up = self.up.clone();
            let client_id = self.client_id.clone();
            let connection = self.connection.clone();
            tokio::spawn(async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_secs(delay.into())).await;
                    // A reconnect within the delay cancels the will.
                    if stop_waiting(&up, &client_id, &connection).is_some_and(|o| o.replaced()) {
                        ownership.replace();
                    }
                    let connected_here = up.local.lock().contains_key(&client_id);
                    let current = up.sessions.get(&client_id);
                    let current = current.as_ref().map(|e| &e.value[..]);
                    if !ownership.delayed_will_due(connected_here, current) {
                        return;
                    }
                }
                let publish = will_publish(&will);
                match produce(&up, &publish, &client_id).await {
                    Ok(()) => tracing::info!(client_id, topic = &*publish.topic, "will published"),
                    Err(reason) => {
                        tracing::warn!(client_id, reason = reason.name(), "will not published")
                    }
                }
            });
        }
    }
}

/// Watches the client's session records for a newer connection while the delayed will of
/// `ownership` waits (see `io::reconnect_check`).
fn wait_for_reconnects(up: &KafkaUpstream, client_id: &str, ownership: Ownership) {
    let mut waiting = up.delayed_wills.lock();
    waiting
        .entry(client_id.to_string())
        .or_default()
        .push(ownership);
}

/// Stops watching for the delayed will of `connection`; what was seen meanwhile.
fn stop_waiting(up: &KafkaUpstream, client_id: &str, connection: &str) -> Option<Ownership> {
    let mut waiting = up.delayed_wills.lock();
    let wills = waiting.get_mut(client_id)?;
    let seen = wills
        .iter()
        .position(|o| o.connection == connection)
        .map(|at| wills.swap_remove(at));
    if wills.is_empty() {
        waiting.remove(client_id);
    }
    seen
}
