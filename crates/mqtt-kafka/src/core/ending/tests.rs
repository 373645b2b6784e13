//! How sessions end and resume: expiry, will and will delay over reconnects, takeover.

use super::*;
use crate::core::state::StoredWill;
use strait_mqtt_codec::QoS;

fn will(delay: Option<u32>) -> Will {
    let mut will = Will {
        topic: "status/c".into(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        ..Default::default()
    };
    will.properties.will_delay_interval = delay;
    will.properties.content_type = Some("text/plain".into());
    will
}

#[test]
fn session_expiry_from_connect_and_disconnect() {
    let mut connect = Connect {
        client_id: "c".into(),
        clean_start: true,
        ..Default::default()
    };
    assert_eq!(session_expiry(Protocol::V311, &connect), 0);
    connect.clean_start = false;
    assert_eq!(session_expiry(Protocol::V311, &connect), u32::MAX);
    assert_eq!(session_expiry(Protocol::V5, &connect), 0, "v5 default");
    connect.properties.session_expiry_interval = Some(300);
    assert_eq!(session_expiry(Protocol::V5, &connect), 300);

    assert_eq!(expiry_after_disconnect(300, Some(10)), 10);
    assert_eq!(expiry_after_disconnect(300, None), 300);
    assert_eq!(
        expiry_after_disconnect(0, Some(10)),
        0,
        "a session without expiry may not get one at DISCONNECT"
    );
}

#[test]
fn the_will_after_each_kind_of_end() {
    let now = will(None);
    let plans = [
        (End::Dropped, WillPlan::Now),
        (
            End::Server(ReasonCode::PROTOCOL_ERROR, "x".into()),
            WillPlan::Now,
        ),
        (End::Disconnect(ReasonCode::SUCCESS), WillPlan::None),
        (
            End::Disconnect(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE),
            WillPlan::Now,
        ),
        (End::Shutdown, WillPlan::None),
        (End::RelayRestart, WillPlan::None),
        (End::TakenOver, WillPlan::Now),
    ];
    for (end, plan) in plans {
        assert_eq!(will_plan(Some(&now), &end, 300), plan, "{end:?}");
    }
    assert_eq!(will_plan(None, &End::Dropped, 300), WillPlan::None);
}

#[test]
fn will_delay_is_capped_by_the_session_expiry_and_cancelled_by_a_takeover() {
    let delayed = will(Some(60));
    assert_eq!(
        will_plan(Some(&delayed), &End::Dropped, 300),
        WillPlan::After(60)
    );
    assert_eq!(
        will_plan(Some(&delayed), &End::Dropped, 10),
        WillPlan::After(10)
    );
    assert_eq!(
        will_plan(Some(&delayed), &End::Dropped, 0),
        WillPlan::Now,
        "a session that ends with the connection publishes at once"
    );
    assert_eq!(
        will_plan(Some(&delayed), &End::TakenOver, 300),
        WillPlan::None,
        "the new connection cancels a delayed will"
    );
}

#[test]
fn the_client_is_told_why_the_server_ended_the_session() {
    assert_eq!(
        End::TakenOver.close().map(|(r, _)| r),
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );
    assert_eq!(
        End::Shutdown.close().map(|(r, _)| r),
        Some(ReasonCode::SERVER_SHUTTING_DOWN)
    );
    assert_eq!(End::Dropped.close(), None);
    assert_eq!(End::Disconnect(ReasonCode::SUCCESS).close(), None);
}

#[test]
fn a_will_becomes_the_publish_it_describes() {
    let publish = will_publish(&will(Some(5)));
    assert_eq!(&*publish.topic, "status/c");
    assert_eq!(&publish.payload[..], b"offline");
    assert_eq!((publish.qos, publish.retain), (QoS::AtLeastOnce, true));
    assert_eq!(
        publish.properties.content_type.as_deref(),
        Some("text/plain")
    );
}

/// The sessions topic, as far as one client id goes: its records in order (`None`: a
/// tombstone), which every replica reads.
#[derive(Default)]
struct SessionsTopic {
    written: Vec<Option<Vec<u8>>>,
}

impl SessionsTopic {
    fn latest(&self) -> Option<&[u8]> {
        self.written.last().and_then(|r| r.as_deref())
    }

    fn write(&mut self, value: Option<Vec<u8>>) {
        self.written.push(value);
    }

    /// Hands `ownership` the records written since `seen`, as the sessions table's reader does
    /// (`io::takeover_check`); whether one took the connection over.
    fn read(&self, ownership: &mut Ownership, seen: &mut usize) -> bool {
        let mut taken_over = false;
        for record in self.written[*seen..].iter().flatten() {
            taken_over |= ownership.observe(record);
        }
        *seen = self.written.len();
        taken_over
    }
}

/// One connection of client `c`, the way `io::session` runs one with these rules.
struct Connection {
    connection: String,
    connected_at_ms: i64,
    expiry: u32,
    will: Option<Will>,
    record: SessionRecord,
    /// What it learned of newer connections of the client, from the records up to `seen`.
    ownership: Ownership,
    seen: usize,
}

impl Connection {
    /// CONNECT: resumes what the sessions topic holds (unless `clean_start`), then claims the
    /// session with a record of its own before CONNACK. Returns CONNACK's Session Present.
    fn connect(
        topic: &mut SessionsTopic,
        name: &str,
        at_ms: i64,
        connect: &Connect,
    ) -> (Self, bool) {
        let expiry = session_expiry(Protocol::V5, connect);
        let resumed = resume(connect.clean_start, topic.latest(), at_ms).unwrap();
        let session_present = resumed.is_some();
        let mut record = resumed.unwrap_or_else(|| SessionRecord {
            version: crate::core::state::VERSION,
            owner: "s-proxy-1".into(),
            connection: String::new(),
            connected_at_ms: 0,
            disconnected_at_ms: None,
            expiry: 0,
            subscriptions: Vec::new(),
            offsets: Default::default(),
            qos2_received: Vec::new(),
            will: None,
            qos2_out: Vec::new(),
            qos2_done: Default::default(),
            qos2_pending: Vec::new(),
        });
        record.connection = name.into();
        record.connected_at_ms = at_ms;
        record.disconnected_at_ms = None;
        record.expiry = expiry;
        record.will = connect.will.as_ref().map(StoredWill::from_will);
        topic.write(Some(record.encode()));
        let connection = Self {
            connection: name.into(),
            connected_at_ms: at_ms,
            expiry,
            will: connect.will.clone(),
            record,
            ownership: Ownership::new(name, at_ms),
            seen: topic.written.len(),
        };
        (connection, session_present)
    }

    /// Whether the latest record of the sessions topic takes this connection over.
    fn sees_takeover(&self, topic: &SessionsTopic) -> bool {
        topic
            .latest()
            .is_some_and(|r| taken_over_by(r, &self.connection, self.connected_at_ms))
    }

    /// The session ends with `end` at `at_ms`, after its replica has read the sessions topic
    /// (a takeover it did not act on yet included): writes its end if it may, and says what the
    /// client was told and what becomes of the will.
    fn end(&mut self, topic: &mut SessionsTopic, end: End, at_ms: i64) -> Finish {
        topic.read(&mut self.ownership, &mut self.seen);
        let finish = finish(self.will.as_ref(), &end, self.expiry);
        if finish.store != Store::Nothing && self.ownership.still_ours(topic.latest()) {
            topic.write(match finish.store {
                Store::Disconnected => {
                    self.record.disconnected_at_ms = Some(at_ms);
                    Some(self.record.encode())
                }
                Store::Delete | Store::Nothing => None,
            });
        }
        finish
    }

    /// Whether its delayed will (after the connection ended) is due now, with nobody
    /// connected on its replica: the replica has read the sessions topic meanwhile.
    fn will_due(&mut self, topic: &SessionsTopic) -> bool {
        topic.read(&mut self.ownership, &mut self.seen);
        self.ownership.delayed_will_due(false, topic.latest())
    }
}

fn connect(expiry: Option<u32>, will_delay: Option<u32>) -> Connect {
    let mut connect = Connect {
        client_id: "c".into(),
        clean_start: false,
        will: Some(will(will_delay)),
        ..Default::default()
    };
    connect.properties.session_expiry_interval = expiry;
    connect
}

#[test]
fn a_reconnect_within_the_will_delay_cancels_the_will_and_resumes_the_session() {
    let mut topic = SessionsTopic::default();
    let (mut a, present) =
        Connection::connect(&mut topic, "a-1", 1_000, &connect(Some(300), Some(60)));
    assert!(!present);
    a.record.qos2_received = vec![3];
    a.record
        .subscriptions
        .push(crate::core::state::StoredSubscription {
            filter: "x/#".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            subscription_id: None,
        });
    let finish = a.end(&mut topic, End::Dropped, 2_000);
    assert_eq!(finish.will, WillPlan::After(60));
    assert_eq!(finish.store, Store::Disconnected);
    assert_eq!(
        finish.close, None,
        "the connection is gone: nothing to tell"
    );
    // Nobody back yet: half-way through the delay the will would still be due.
    assert!(a.will_due(&topic));

    // 30 s later the client is back, on any replica.
    let (b, present) =
        Connection::connect(&mut topic, "b-2", 32_000, &connect(Some(300), Some(60)));
    assert!(present, "CONNACK Session Present");
    assert_eq!(b.record.qos2_received, [3]);
    assert_eq!(b.record.subscriptions[0].filter, "x/#");
    // When the delay has passed, the will of the first connection is not published.
    assert!(!a.will_due(&topic));
    assert!(
        !Ownership::new("a-1", 1_000).delayed_will_due(true, None),
        "connected on this replica"
    );
}

#[test]
fn without_a_reconnect_the_delayed_will_goes_after_its_delay() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 1_000, &connect(Some(300), Some(60)));
    let finish = a.end(
        &mut topic,
        End::Server(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep alive".into()),
        2_000,
    );
    assert_eq!(finish.will, WillPlan::After(60));
    assert_eq!(
        finish.close.map(|(r, _)| r),
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    assert!(a.will_due(&topic));
    // The session record was deleted meanwhile (it expired): still due.
    topic.write(None);
    assert!(a.will_due(&topic));
}

#[test]
fn a_session_without_expiry_is_deleted_at_its_end_and_its_will_goes_at_once() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 1_000, &connect(None, Some(60)));
    let finish = a.end(&mut topic, End::Dropped, 2_000);
    assert_eq!(
        finish.will,
        WillPlan::Now,
        "the delay is capped by expiry 0"
    );
    assert_eq!(finish.store, Store::Delete);
    assert_eq!(topic.latest(), None);
    let (_, present) = Connection::connect(&mut topic, "b-2", 3_000, &connect(Some(300), None));
    assert!(!present);
}

#[test]
fn a_session_resumes_until_its_expiry_and_not_after() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 0, &connect(Some(10), None));
    // A normal DISCONNECT: no will, and the session is kept for 10 s.
    let finish = a.end(&mut topic, End::Disconnect(ReasonCode::SUCCESS), 5_000);
    assert_eq!(
        (finish.will, finish.store),
        (WillPlan::None, Store::Disconnected)
    );
    let stored = topic.latest().unwrap().to_vec();
    assert!(resume(false, Some(&stored), 14_999).unwrap().is_some());
    assert_eq!(resume(false, Some(&stored), 15_000), Ok(None), "expired");
    assert_eq!(resume(true, Some(&stored), 6_000), Ok(None), "clean start");
    assert!(resume(false, Some(b"{not json"), 6_000).is_err());
    assert_eq!(resume(false, None, 6_000), Ok(None));
}

#[test]
fn a_second_connect_with_the_same_client_id_takes_the_session_over() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 1_000, &connect(Some(300), None));
    a.record.qos2_received = vec![5];
    topic.write(Some(a.record.encode()));
    assert!(!a.sees_takeover(&topic), "its own record");

    let (mut b, present) =
        Connection::connect(&mut topic, "b-2", 2_000, &connect(Some(300), Some(30)));
    assert!(present, "the new connection resumes the state");
    assert_eq!(b.record.qos2_received, [5]);
    assert!(a.sees_takeover(&topic));
    assert!(!b.sees_takeover(&topic));

    // The old connection is told 0x8E and leaves the record to the new one; its will has no
    // delay, so it goes now (MQTT-3.1.4-3).
    let finish = a.end(&mut topic, End::TakenOver, 2_100);
    assert_eq!(
        finish.close.map(|(r, _)| r),
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );
    assert_eq!((finish.will, finish.store), (WillPlan::Now, Store::Nothing));
    let latest = SessionRecord::decode(topic.latest().unwrap()).unwrap();
    assert_eq!(latest.connection, "b-2");
    assert_eq!(latest.disconnected_at_ms, None);

    // A third connection takes over from b, whose will has a delay: cancelled, not sent.
    let (_c, _) = Connection::connect(&mut topic, "c-3", 3_000, &connect(Some(300), None));
    assert!(b.sees_takeover(&topic));
    let finish = b.end(&mut topic, End::TakenOver, 3_100);
    assert_eq!(finish.will, WillPlan::None);
}

#[test]
fn a_connection_that_ends_after_being_replaced_does_not_overwrite_the_new_record() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 1_000, &connect(Some(300), None));
    // b claims the session before a notices; then a's client drops.
    let (_b, _) = Connection::connect(&mut topic, "b-2", 2_000, &connect(Some(300), None));
    let finish = a.end(&mut topic, End::Dropped, 2_050);
    assert_eq!(finish.store, Store::Disconnected, "what a would store…");
    let latest = SessionRecord::decode(topic.latest().unwrap()).unwrap();
    assert_eq!(
        (latest.connection.as_str(), latest.disconnected_at_ms),
        ("b-2", None),
        "…but the record is b's"
    );
    // An older connection's record never takes a newer one over.
    let mut older = latest.clone();
    older.connection = "z-0".into();
    older.connected_at_ms = 500;
    assert!(!taken_over_by(&older.encode(), "b-2", 2_000));
}

#[test]
fn a_connection_replaced_by_one_that_deleted_the_session_does_not_write_it_back() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 1_000, &connect(Some(300), None));
    // b claims the session (a is told 0x8E but drops first), then ends with expiry 0: its
    // session is deleted.
    let (mut b, present) = Connection::connect(&mut topic, "b-2", 2_000, &connect(None, None));
    assert!(present);
    let finish = b.end(&mut topic, End::Disconnect(ReasonCode::SUCCESS), 2_500);
    assert_eq!(finish.store, Store::Delete);
    assert_eq!(topic.latest(), None);
    let finish = a.end(&mut topic, End::Dropped, 3_000);
    assert_eq!(finish.store, Store::Disconnected, "what a would store…");
    assert_eq!(topic.latest(), None, "…but b deleted the session");
    let (_, present) = Connection::connect(&mut topic, "c-3", 4_000, &connect(Some(300), None));
    assert!(!present, "nothing of a's to resume");
}

#[test]
fn a_deleted_record_is_not_taken_for_one_never_stored() {
    let mut a = Ownership::new("a-1", 1_000);
    assert!(a.still_ours(None), "no newer connection: a's to write");
    let mut older = Connection::connect(
        &mut SessionsTopic::default(),
        "z-0",
        500,
        &connect(Some(300), None),
    )
    .0
    .record;
    assert!(!a.observe(&older.encode()), "an older connection's record");
    assert!(!a.replaced());
    older.connection = "b-2".into();
    older.connected_at_ms = 2_000;
    assert!(a.observe(&older.encode()), "a newer claim takes a over");
    assert!(a.replaced());
    assert!(!a.still_ours(None), "deleted by b");
    assert!(!a.delayed_will_due(false, None), "b reconnected");
    assert!(!a.observe(b"{not json"));
}

#[test]
fn a_reconnect_within_the_will_delay_cancels_the_will_even_once_that_session_has_ended() {
    let mut topic = SessionsTopic::default();
    let (mut a, _) = Connection::connect(&mut topic, "a-1", 1_000, &connect(Some(300), Some(60)));
    assert_eq!(
        a.end(&mut topic, End::Dropped, 2_000).will,
        WillPlan::After(60)
    );
    // 10 s later the client is back (MQTT 5 §3.1.3.2.2: a's will must not be sent), and ends
    // its session with expiry 0 before a's delay has passed: the record is deleted.
    let (mut b, present) = Connection::connect(&mut topic, "b-2", 12_000, &connect(None, None));
    assert!(present);
    let finish = b.end(&mut topic, End::Disconnect(ReasonCode::SUCCESS), 20_000);
    assert_eq!((finish.will, finish.store), (WillPlan::None, Store::Delete));
    assert_eq!(topic.latest(), None);
    // At 62 s a's delay has passed: its will stays cancelled.
    assert!(!a.will_due(&topic));
}

#[derive(Debug, Clone)]
enum Event {
    /// A new connection of the client, with or without session expiry.
    Connect { expiry: bool },
    /// Connection number `n` (of those still connected) ends this way.
    End(proptest::sample::Index, End),
}

fn event() -> impl proptest::strategy::Strategy<Value = Event> {
    use proptest::prelude::*;
    let end = prop_oneof![
        Just(End::Dropped),
        Just(End::Disconnect(ReasonCode::SUCCESS)),
        Just(End::TakenOver),
        Just(End::Shutdown),
    ];
    prop_oneof![
        any::<bool>().prop_map(|expiry| Event::Connect { expiry }),
        (any::<proptest::sample::Index>(), end).prop_map(|(n, end)| Event::End(n, end)),
    ]
}

proptest::proptest! {
    /// For any sequence of connections of one client id and of their ends in any order, on
    /// any replicas (an older connection may end for its own reason before acting on the
    /// takeover): while the newest connection is open, the session record is its claim (an
    /// older one's end never overwrites it), every older connection still open sees itself
    /// taken over while the newest never does; once the newest has ended, the record is its
    /// end or none (an older one's end never writes a deleted session back); and the delayed
    /// will of an older connection is never due, the newest having reconnected after it.
    #[test]
    fn the_newest_connection_always_owns_the_session(
        events in proptest::collection::vec(event(), 1..40),
    ) {
        let mut topic = SessionsTopic::default();
        let mut open: Vec<Connection> = Vec::new();
        let mut newest: Option<String> = None;
        let mut ended: Vec<Connection> = Vec::new();
        for (at, event) in events.into_iter().enumerate() {
            let at_ms = at as i64 * 1_000;
            match event {
                Event::Connect { expiry } => {
                    let name = format!("c-{at:03}");
                    let expiry = expiry.then_some(300);
                    let (connection, _) =
                        Connection::connect(&mut topic, &name, at_ms, &connect(expiry, Some(60)));
                    open.push(connection);
                    newest = Some(name);
                }
                Event::End(n, end) if !open.is_empty() => {
                    let mut connection = open.remove(n.index(open.len()));
                    connection.end(&mut topic, end, at_ms);
                    ended.push(connection);
                }
                Event::End(..) => {}
            }
            let is_newest = |c: &Connection| Some(&c.connection) == newest.as_ref();
            if open.iter().any(is_newest) {
                let latest = topic.latest().expect("the newest connection's claim");
                let record = SessionRecord::decode(latest).unwrap();
                proptest::prop_assert_eq!(Some(&record.connection), newest.as_ref());
                proptest::prop_assert_eq!(record.disconnected_at_ms, None);
                for connection in &open {
                    proptest::prop_assert_eq!(connection.sees_takeover(&topic), !is_newest(connection));
                }
            } else if let Some(latest) = topic.latest() {
                let record = SessionRecord::decode(latest).unwrap();
                proptest::prop_assert_eq!(Some(&record.connection), newest.as_ref());
            }
            for connection in ended.iter_mut().filter(|c| !is_newest(c)) {
                proptest::prop_assert!(!connection.will_due(&topic), "{}", connection.connection);
            }
        }
    }
}
