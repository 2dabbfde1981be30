//! End to end on real services: generator -> Kafka (Tansu) -> consumer -> MongoDB (SecantusDB).

mod common;

use common::ServicePipeline;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use runner::pipeline::{Components, RunSummary};
use runner::store::{self, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn run(sp: &ServicePipeline, components: Components, events: Option<u64>) -> RunSummary {
    common::run_pipeline(sp, components, events, CancellationToken::new()).await
}

async fn store_of(sp: &ServicePipeline) -> Arc<dyn Store> {
    store::open(
        &sp.pipeline.config.mongodb,
        &sp.pipeline.config.embedded,
        &sp.pipeline.config.retention,
        &sp.pipeline.config.schema().unwrap(),
    )
    .await
    .unwrap()
    .store
}

fn group_consumer(sp: &ServicePipeline) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .set("group.id", &sp.group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Per partition: (committed offset of the group, high watermark).
fn committed_and_end(sp: &ServicePipeline) -> Vec<(i32, i64, i64)> {
    let c = group_consumer(sp);
    let mut tpl = TopicPartitionList::new();
    for p in 0..sp.pipeline.config.kafka.partitions {
        tpl.add_partition(&sp.topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = c
                .fetch_watermarks(&sp.topic, e.partition(), Duration::from_secs(10))
                .unwrap();
            let off = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            (e.partition(), off, high)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_exact_counts() {
    let sp = common::service_pipeline("e2e");
    let n = 20_000;
    let summary = run(&sp, Components::ALL, Some(n)).await;
    assert_eq!(summary.stats.generated, n);
    assert_eq!(
        summary.stats.delivered, n,
        "broker acknowledged every event"
    );
    let store = store_of(&sp).await;
    assert_eq!(store.count_events().await.unwrap(), n);
    assert_eq!(common::stored_ids(&*store).await.1, n as usize);
    let offsets = committed_and_end(&sp);
    println!("committed vs end per partition: {offsets:?}");
    assert_eq!(offsets.iter().map(|(_, c, _)| c).sum::<i64>(), n as i64);
    for (p, committed, end) in offsets {
        assert_eq!(committed, end, "partition {p} committed up to its end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_harmless() {
    let sp = common::service_pipeline("replay");
    let n = 5_000;
    run(&sp, Components::ALL, Some(n)).await;

    common::reset_group_offsets(&sp);

    let again = run(&sp, Components::CONSUMER, None).await;
    assert_eq!(
        again.stats.consumed, n,
        "the whole topic was consumed again"
    );
    assert_eq!(again.stats.duplicates, n);
    assert_eq!(again.stats.stored, 0);
    let store = store_of(&sp).await;
    assert_eq!(store.count_events().await.unwrap(), n);
    assert_eq!(common::stored_ids(&*store).await.1, n as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_is_skipped() {
    // Decoded as each message arrives (one thread), and gathered and decoded on worker threads.
    for workers in [1, 3] {
        bad_message_is_skipped_with(workers).await;
    }
}

async fn bad_message_is_skipped_with(workers: usize) {
    let mut sp = common::service_pipeline(&format!("bad{workers}"));
    sp.pipeline.config.consumer.workers = workers;
    let n = 1_000;
    // Publish good events first (this also creates the topic), then two bad ones.
    run(&sp, Components::GENERATOR, Some(n)).await;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::kafka())
        .create()
        .unwrap();
    for payload in ["this is not json", r#"{"user_id": 5, "item_id": "item_1"}"#] {
        producer
            .send(BaseRecord::to(&sp.topic).key("bad").payload(payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let consumed = run(&sp, Components::CONSUMER, None).await;
    assert_eq!(consumed.stats.rejected, 2, "workers = {workers}");
    assert_eq!(consumed.stats.stored, n, "workers = {workers}");
    let store = store_of(&sp).await;
    assert_eq!(store.count_events().await.unwrap(), n);
    let offsets = committed_and_end(&sp);
    assert!(
        offsets.iter().all(|(_, c, e)| c == e),
        "bad messages are committed past too: {offsets:?}"
    );
}
