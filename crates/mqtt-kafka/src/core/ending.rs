//! How long a session lives and how it ends, as plain decisions: the session expiry from
//! CONNECT and DISCONNECT, what the client is told when the session ends, and whether and when
//! its will is published. The session driver (`io::session`) carries them out.

use strait_mqtt_codec::{Connect, Protocol, Publish, ReasonCode, Will};

use crate::core::state::{SessionRecord, StoredWill};

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// DISCONNECT from the client (its reason code).
    Disconnect(ReasonCode),
    /// The client went away without DISCONNECT.
    Dropped,
    /// Another connection took the session over.
    TakenOver,
    /// We end it with this reason (and detail).
    Server(ReasonCode, String),
    Shutdown,
    /// r-proxy is restarting; the client reconnects elsewhere.
    RelayRestart,
}

impl End {
    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Disconnect(_) => "disconnect",
            Self::Dropped => "dropped",
            Self::TakenOver => "taken over",
            Self::Server(..) => "server",
            Self::Shutdown => "shutdown",
            Self::RelayRestart => "r-proxy restart",
        }
    }

    /// Whether the will is due (after its delay): the connection ended without a normal
    /// DISCONNECT (MQTT-3.1.2-8), or with 0x04 Disconnect with Will Message. Not on a takeover
    /// (see [`will_plan`]), a shutdown or an r-proxy restart, which the client did not cause.
    pub fn publishes_will(&self) -> bool {
        match self {
            Self::Disconnect(reason) => *reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            Self::Dropped | Self::Server(..) => true,
            Self::TakenOver | Self::Shutdown | Self::RelayRestart => false,
        }
    }

    /// The DISCONNECT reason and detail the client is told before its stream closes, if any.
    pub fn close(&self) -> Option<(ReasonCode, String)> {
        match self {
            Self::TakenOver => Some((
                ReasonCode::SESSION_TAKEN_OVER,
                "another connection took the session over".into(),
            )),
            Self::Server(reason, detail) => Some((*reason, detail.clone())),
            Self::Shutdown => Some((
                ReasonCode::SERVER_SHUTTING_DOWN,
                "s-proxy shutting down".into(),
            )),
            Self::Disconnect(_) | Self::Dropped | Self::RelayRestart => None,
        }
    }
}

/// The session expiry interval in seconds a CONNECT asks for: 3.1.1's clean session is 0 and a
/// persistent one never expires; v5 says it (absent: 0).
pub fn session_expiry(protocol: Protocol, connect: &Connect) -> u32 {
    match protocol {
        Protocol::V311 if connect.clean_start => 0,
        Protocol::V311 => u32::MAX,
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
    }
}

/// The expiry after a DISCONNECT that may carry a new one: only a session that had an expiry
/// may change it (MQTT-3.14.2-2).
pub fn expiry_after_disconnect(current: u32, requested: Option<u32>) -> u32 {
    match requested {
        Some(expiry) if current > 0 => expiry,
        _ => current,
    }
}

/// When a session's will is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillPlan {
    None,
    Now,
    /// After this many seconds, unless the client has reconnected meanwhile.
    After(u32),
}

/// The will of a session that ended with `end`, whose session expiry is `expiry`: the will
/// delay is capped by the session expiry (MQTT-3.1.3-9). A taken-over connection's will is
/// published at once when it has no delay (MQTT-3.1.4-3), and cancelled by the new connection
/// when it has one.
pub fn will_plan(will: Option<&Will>, end: &End, expiry: u32) -> WillPlan {
    let Some(will) = will else {
        return WillPlan::None;
    };
    let delay = will.properties.will_delay_interval.unwrap_or(0);
    if *end == End::TakenOver {
        return if delay == 0 {
            WillPlan::Now
        } else {
            WillPlan::None
        };
    }
    if !end.publishes_will() {
        return WillPlan::None;
    }
    match delay.min(expiry) {
        0 => WillPlan::Now,
        delay => WillPlan::After(delay),
    }
}

/// The PUBLISH a will becomes.
pub fn will_publish(will: &Will) -> Publish {
    StoredWill::from_will(will).to_publish()
}

/// What a session that ended does with its record in the sessions topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Nothing: the connection that took the session over owns the record.
    Nothing,
    /// Delete it: a session without expiry ends with its connection.
    Delete,
    /// Keep it, marked disconnected now: the session lives on for its expiry.
    Disconnected,
}

/// What a session does when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The DISCONNECT reason and detail the client is told, if any.
    pub close: Option<(ReasonCode, String)>,
    pub will: WillPlan,
    pub store: Store,
}

/// How a session with `will` and session expiry `expiry` ends with `end`.
pub fn finish(will: Option<&Will>, end: &End, expiry: u32) -> Finish {
    let store = match (end, expiry) {
        (End::TakenOver, _) => Store::Nothing,
        (_, 0) => Store::Delete,
        _ => Store::Disconnected,
    };
    Finish {
        close: end.close(),
        will: will_plan(will, end, expiry),
        store,
    }
}

/// The session a CONNECT resumes, from the client's latest record in the sessions topic
/// (`stored`): none on a clean start, an expired session or none stored; `Err` for a record
/// that cannot be read (the caller logs it and starts afresh).
pub fn resume(
    clean_start: bool,
    stored: Option<&[u8]>,
    now_ms: i64,
) -> Result<Option<SessionRecord>, String> {
    let Some(stored) = stored.filter(|_| !clean_start) else {
        return Ok(None);
    };
    let record = SessionRecord::decode(stored)?;
    Ok((!record.expired(now_ms)).then_some(record))
}

/// Whether the record the client's connection `connection` (connected at `connected_at_ms`)
/// sees written (`current`) takes the session over: a newer, live connection of the client.
pub fn taken_over_by(current: &[u8], connection: &str, connected_at_ms: i64) -> bool {
    SessionRecord::decode(current).is_ok_and(|r| r.takes_over(connection, connected_at_ms))
}

/// One connection of a client id, and whether a newer connection of the same client id has
/// claimed the session since, as far as this replica has seen: by its claim in the sessions
/// topic (every replica reads every record, in order, so a claim is seen before the deletion
/// that may follow it) or by taking the connection over here. The latest record alone cannot
/// tell a session deleted by a newer connection from one never stored, nor whether the client
/// reconnected within a will's delay and ended again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub connection: String,
    pub connected_at_ms: i64,
    replaced: bool,
}

impl Ownership {
    pub fn new(connection: impl Into<String>, connected_at_ms: i64) -> Self {
        Self {
            connection: connection.into(),
            connected_at_ms,
            replaced: false,
        }
    }

    /// A record of the client written to the sessions topic (not a tombstone): notes a newer
    /// connection's, and says whether it takes this connection (if still open) over.
    pub fn observe(&mut self, record: &[u8]) -> bool {
        let Ok(record) = SessionRecord::decode(record) else {
            return false;
        };
        if record.newer_than(&self.connection, self.connected_at_ms) {
            self.replaced = true;
        }
        record.takes_over(&self.connection, self.connected_at_ms)
    }

    /// A newer connection of the client took this one over (told here, or by its claim).
    pub fn replace(&mut self) {
        self.replaced = true;
    }

    /// Whether a newer connection of the client has claimed the session.
    pub fn replaced(&self) -> bool {
        self.replaced
    }

    /// Whether the connection may write its end over the client's latest record (`current`):
    /// not once a newer connection, maybe on another replica, has claimed the session, even if
    /// that one has deleted the record since; not over another connection's record. An
    /// unreadable record, or none when no newer connection came, is no one else's.
    pub fn still_ours(&self, current: Option<&[u8]>) -> bool {
        !self.replaced
            && current.is_none_or(|value| {
                SessionRecord::decode(value).map_or(true, |r| r.connection == self.connection)
            })
    }

    /// Whether the connection's delayed will is still due once its delay has passed: not when
    /// the client has connected again meanwhile (MQTT 5 §3.1.3.2.2), here (`connected_here`)
    /// or anywhere (a newer connection's claim was seen, or the latest record, `current`, names
    /// another connection), even if that connection has ended since.
    pub fn delayed_will_due(&self, connected_here: bool, current: Option<&[u8]>) -> bool {
        if connected_here || self.replaced {
            return false;
        }
        !current.is_some_and(|value| {
            SessionRecord::decode(value).is_ok_and(|r| r.connection != self.connection)
        })
    }
}

#[cfg(test)]
mod tests;
