//! MQTT on Kafka: s-proxy's Kafka upstream, where Kafka is the broker (Zilla's mqtt-kafka record
//! layout, so Zilla users keep their topics and consumers).
//!
//! - [`core`]: plain logic, no I/O: where a PUBLISH goes (routing, murmur2 partitions), the
//!   record layout (headers), the subscription trie, and the session record format.
//! - [`io`]: the process-wide upstream (producers, the dispatcher, inboxes, shared groups,
//!   tables, topic admin, the watchdog) and the session driver. Every Kafka client comes from
//!   strait-kafka.

pub mod core;
pub mod io;

pub use io::{KafkaUpstream, TopicCheck, run};
