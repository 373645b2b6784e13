//! The end of a session: the client told why, subscriptions and shared records given back, the
//! session record stored, the will published when and if due.

use super::*;

impl Session {
    pub(super) async fn finish(mut self, end: End, to_client: &ToClient, metrics: &RelayMetrics) {
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
        forget_local(&self.up, &self.client_id, &self.connection);
        let stored = match store {
            Store::Disconnected => Some(self.record(Some(now_ms())).encode()),
            Store::Delete | Store::Nothing => None,
        };
        // A newer connection (maybe on another replica) may own the record by now.
        let current = self.up.sessions.get(&self.client_id);
        if !ending::still_ours(current.as_ref().map(|e| &e.value[..]), &self.connection) {
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
                    let connected_here = up.local.lock().contains_key(&client_id);
                    let current = up.sessions.get(&client_id);
                    let current = current.as_ref().map(|e| &e.value[..]);
                    if !ending::delayed_will_due(connected_here, current, &connection) {
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
