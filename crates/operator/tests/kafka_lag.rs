//! The autoscaler's view of Kafka: consumer-group lag, partitions and members read from a real
//! broker, then turned into a replica count.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use strait_e2e::{require, unique_name};
use strait_operator::autoscale::{self, Policy};
use strait_operator::kafka::{LagError, observe};
use strait_operator::kafka_access::KafkaAccess;

#[tokio::test]
async fn lag_counts_uncommitted_records_and_drives_the_replica_count() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let topic = unique_name("lag");
    let group = unique_name("lag-group");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            [&NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..30 {
        let partition = i % 3;
        producer
            .send(
                FutureRecord::<(), _>::to(&topic)
                    .partition(partition)
                    .payload("request"),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }

    let (b, t, g) = (bootstrap.clone(), topic.clone(), group.clone());
    let seen = tokio::task::spawn_blocking(move || observe(&KafkaAccess::plaintext(b), &t, &g))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.lag, seen.partitions, seen.members), (30, 3, 0));
    let policy = Policy {
        min_replicas: 0,
        max_replicas: 10,
        lag_threshold: 5,
        activation_lag: 0,
        scale_down_window: Duration::from_secs(60),
        max_partitions: None,
    };
    let decision = autoscale::recommend(&policy, &seen, Some(0));
    assert_eq!((decision.replicas, decision.reason), (3, "PartitionCapped"));

    // The group commits partition 0 to its end: its 10 records no longer count.
    let consumer = strait_e2e::group_offsets_client(&bootstrap, &group);
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(10))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    let (b, t, g) = (bootstrap.clone(), topic.clone(), group.clone());
    let seen = tokio::task::spawn_blocking(move || observe(&KafkaAccess::plaintext(b), &t, &g))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.lag, 20);
    assert_eq!(autoscale::recommend(&policy, &seen, Some(0)).replicas, 3);

    let missing = unique_name("absent");
    let error = tokio::task::spawn_blocking(move || {
        observe(&KafkaAccess::plaintext(bootstrap), &missing, &group)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(error, LagError::NoTopic(_)), "{error}");
}
