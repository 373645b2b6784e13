//! Wills and expired sessions of replicas that died: every replica writes a heartbeat to the
//! sessions topic; the first live replica (by instance id) publishes the wills of clients
//! whose replica stopped beating while they were connected, and clears expired sessions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{KafkaUpstream, now_ms};
use crate::UpstreamError;
use crate::core::state::{Heartbeat, REPLICA_PREFIX, SessionRecord, VERSION};

pub(super) async fn run(up: Arc<KafkaUpstream>) {
    let lease = up.config.replica_lease;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = false;
    // Connections whose will this replica has taken care of.
    let mut handled: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = up.shutdown.cancelled() => return,
        }
        if let Err(error) = beat(&up).await {
            tracing::warn!(
                error = crate::error_chain(&error),
                "cannot write the replica heartbeat"
            );
            continue;
        }
        // Judge others only on a table read up to its end (a fresh replica has not yet seen
        // their heartbeats).
        if !synced {
            synced = up.sessions.sync(Duration::from_secs(30)).await.is_ok();
            continue;
        }
        let now = now_ms();
        let entries = up.sessions.select(|_| true);
        let mut alive: Vec<&str> = entries
            .iter()
            .filter_map(|(key, entry)| {
                let instance = key.strip_prefix(REPLICA_PREFIX)?;
                let beat: Heartbeat = serde_json::from_slice(&entry.value).ok()?;
                beat.alive(now, lease.as_millis() as i64)
                    .then_some(instance)
            })
            .collect();
        alive.sort_unstable();
        if alive.first().copied() != Some(up.instance.as_str()) {
            continue;
        }
        // Connections still recorded as connected: `handled` keeps only those, so it does not
        // grow with every orphan ever handled.
        let mut connected = HashSet::new();
        for (client_id, entry) in &entries {
            if client_id.starts_with(REPLICA_PREFIX) {
                continue;
            }
            let Ok(record) = SessionRecord::decode(&entry.value) else {
                continue;
            };
            if record.disconnected_at_ms.is_some() {
                if record.expired(now) {
                    let _ = super::session::put_session(&up, client_id, None).await;
                }
                continue;
            }
            connected.insert(record.connection.clone());
            if record.owner == up.instance
                || alive.binary_search(&record.owner.as_str()).is_ok()
                || !handled.insert(record.connection.clone())
            {
                continue;
            }
            tracing::info!(
                client_id,
                owner = record.owner,
                "the replica serving this client stopped; ending its session"
            );
            tokio::spawn(orphaned(up.clone(), client_id.clone(), record));
        }
        handled.retain(|connection| connected.contains(connection));
    }
}

async fn beat(up: &KafkaUpstream) -> Result<(), UpstreamError> {
    let beat = Heartbeat {
        version: VERSION,
        alive_at_ms: now_ms(),
    };
    let key = format!("{REPLICA_PREFIX}{}", up.instance);
    super::session::put_session(up, &key, Some(serde_json::to_vec(&beat)?)).await
}

/// Ends a session whose replica died: after the will delay (capped by the session expiry),
/// unless the client came back, publish the will and mark the session disconnected.
async fn orphaned(up: Arc<KafkaUpstream>, client_id: String, record: SessionRecord) {
    let delay = record
        .will
        .as_ref()
        .map_or(0, |w| w.delay.min(record.expiry));
    if delay > 0 {
        tokio::time::sleep(Duration::from_secs(delay.into())).await;
    }
    let current = up
        .sessions
        .get(&client_id)
        .and_then(|e| SessionRecord::decode(&e.value).ok());
    if current.as_ref().map(|r| &r.connection) != Some(&record.connection) {
        return; // reconnected (or cleared) meanwhile
    }
    if let Some(will) = &record.will {
        match super::session::produce(&up, &will.to_publish(), &client_id).await {
            Ok(()) => tracing::info!(
                client_id,
                topic = will.topic,
                "will of an orphaned session published"
            ),
            Err(reason) => tracing::warn!(client_id, reason = reason.name(), "will not published"),
        }
    }
    let value = (record.expiry > 0).then(|| {
        SessionRecord {
            disconnected_at_ms: Some(now_ms()),
            will: None,
            ..record
        }
        .encode()
    });
    if let Err(error) = super::session::put_session(&up, &client_id, value).await {
        tracing::warn!(
            error = crate::error_chain(&error),
            "cannot end an orphaned session"
        );
    }
}
