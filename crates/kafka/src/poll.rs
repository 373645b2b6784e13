//! The loop every reader thread runs: poll, hand the record (or the end of a partition, or
//! nothing) to the caller, log errors the caller cannot act on, until the caller stops.

use std::ops::ControlFlow;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

/// What one poll of a reader gave.
pub enum Polled<'a> {
    Record(BorrowedMessage<'a>),
    /// The reader is at the end of this partition (only with `enable.partition.eof`).
    PartitionEnd(i32),
    /// Nothing within the wait, or an error (already logged at debug level: librdkafka
    /// retries on its own, and connection problems reach [`crate::KafkaReport`]).
    Idle,
}

/// Polls `consumer`, waiting at most `wait` each time, and hands every result to `on` until it
/// breaks; returns what it broke with. `name` labels the log lines of errors.
pub fn poll_loop<C: ConsumerContext, B>(
    consumer: &BaseConsumer<C>,
    name: &str,
    wait: Duration,
    mut on: impl FnMut(Polled<'_>) -> ControlFlow<B>,
) -> B {
    loop {
        let polled = match consumer.poll(wait) {
            Some(Ok(record)) => Polled::Record(record),
            Some(Err(KafkaError::PartitionEOF(partition))) => Polled::PartitionEnd(partition),
            Some(Err(error)) => {
                tracing::debug!(%error, reader = name, "Kafka reader");
                Polled::Idle
            }
            None => Polled::Idle,
        };
        if let ControlFlow::Break(out) = on(polled) {
            return out;
        }
    }
}
