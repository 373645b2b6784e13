//! The sans-IO part of MQTT on Kafka: no sockets, no Kafka clients, no clocks of its own, so
//! everything here is tested with plain unit tests.
//!
//! The session's behaviours and the tests that feed them packet sequences (`cargo test -p
//! strait-mqtt-kafka`, no services; `*` marks a property test):
//!
//! | Behaviour | Module | Tests |
//! |---|---|---|
//! | QoS 2 duplicates after a reconnect (from the client) | `flows`, `exactly_once` | `qos2_resent_after_a_reconnect_is_acknowledged_not_written_again`, `a_qos2_publish_resent_after_its_written_id_was_stored_is_acknowledged_from_state` |
//! | QoS 2 after a crash between the record and the state | `exactly_once` | `a_qos2_publish_resent_after_a_crash_between_records_is_not_written_twice`, `a_qos2_publish_whose_record_never_reached_kafka_is_written_on_resend`, `a_failed_store_of_the_written_id_keeps_the_intent_for_the_resend`, `any_sequence_of_crashes_and_resends_writes_a_qos2_message_at_most_once`* |
//! | QoS 2 to the client over a reconnect (PUBREL again, DUP resend, never twice) | `flows`, `redelivery` | `qos2_delivery_pubrec_pubrel_pubcomp`, `qos2_deliveries_resume_after_a_reconnect_with_their_packet_ids_and_never_twice`, `done_offsets_are_kept_above_the_progress_only` |
//! | Receive Maximum, the client's (outbound) | `flows` | `receive_maximum_bounds_what_is_in_flight`, `any_interleaving_of_sends_and_acks_keeps_the_window`* |
//! | Receive Maximum, ours (inbound, 0x93) | `flows`, `exactly_once` | `an_mqtt5_client_beyond_the_announced_receive_maximum_is_told_0x93`, `a_311_client_has_no_receive_maximum_to_break`, `a_client_within_its_window_is_never_refused`*, `a_refused_write_ends_the_flow_and_frees_the_receive_window` |
//! | Topic aliases both ways | `flows` | `topic_aliases_from_the_client`, `outgoing_topic_aliases_up_to_the_clients_maximum` |
//! | Session expiry, will and will delay over reconnects (a reconnect within the delay cancels the will for good) | `ending` | `a_reconnect_within_the_will_delay_cancels_the_will_and_resumes_the_session`, `without_a_reconnect_the_delayed_will_goes_after_its_delay`, `a_session_without_expiry_is_deleted_at_its_end_and_its_will_goes_at_once`, `a_session_resumes_until_its_expiry_and_not_after`, `the_will_after_each_kind_of_end`, `a_reconnect_within_the_will_delay_cancels_the_will_even_once_that_session_has_ended` |
//! | Takeover (0x8E, the new connection resumes; a replaced connection never writes back a session the newer one deleted) | `ending`, `state` | `a_second_connect_with_the_same_client_id_takes_the_session_over`, `a_connection_that_ends_after_being_replaced_does_not_overwrite_the_new_record`, `a_newer_live_connection_takes_the_session_over`, `a_connection_replaced_by_one_that_deleted_the_session_does_not_write_it_back`, `a_deleted_record_is_not_taken_for_one_never_stored`, `the_newest_connection_always_owns_the_session`* |
//! | Shared subscriptions: acknowledgement, redelivery, commit | `shared`, `members`, `flows` | `records_a_member_leaves_unacknowledged_are_redelivered_by_another_member`, `any_interleaving_of_acks_across_members_commits_only_below_the_first_undelivered`*, `members_take_turns_and_a_full_one_is_skipped` |
//! | Overflow and pause | `queue`, `progress`, `shared`, `catch_up` | `a_full_queue_pauses_delivery_and_reads_back_what_it_left_out_in_order`, `the_progress_never_passes_a_record_still_owed_and_nothing_owed_is_lost`*, `a_full_queue_drops_qos0_and_remembers_where_qos1_must_resume`, `a_full_group_pauses_qos1_and_drops_qos0` |

pub mod catch_up;
pub mod ending;
pub mod exactly_once;
pub mod flows;
/// The bodies of the fuzz targets in `crates/mqtt-kafka/fuzz`, also run by `cargo test`.
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod lanes;
pub mod limits;
pub mod members;
pub mod progress;
pub mod queue;
pub mod redelivery;
pub mod routing;
pub mod shared;
pub mod state;
pub mod subscriptions;
pub mod trie;
