//! Wires the components the command line asks for and runs them until done.
//!
//! Everything that can fail on bad input (config, scripts, connections) is checked before any
//! event is generated, so a bad setup never half-starts the pipeline.

mod reconnect;

use crate::aggregate::MetricSet;
use crate::alert::AlertSet;
use crate::config::{Pipeline, PipelineConfig};
use crate::consumer::StopWhen;
use crate::generator::{Generator, GeneratorScript, Pacer};
use crate::reload::{self, GeneratorLive, Live, ReloadStatus, WatchOptions};
use crate::store::{self, EventStore, Switchable};
use crate::telemetry::{self, Snapshot, Stats};
use crate::transport::{embedded, kafka, Publisher, Subscriber};
use anyhow::{bail, Context};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The two ends of the transport this process uses (either may be absent).
type Transport = (Option<Box<dyn Publisher>>, Option<Box<dyn Subscriber>>);

/// Which parts of the pipeline this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub generator: bool,
    pub consumer: bool,
    pub dashboard: bool,
}

impl Components {
    /// Generator and consumer, no dashboard (tests and benchmarks).
    pub const ALL: Components = Components { generator: true, consumer: true, dashboard: false };
    /// Only the generator.
    pub const GENERATOR: Components = Components { generator: true, consumer: false, dashboard: false };
    /// Only the consumer.
    pub const CONSUMER: Components = Components { generator: false, consumer: true, dashboard: false };
}

/// How a run is bounded and reported.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub components: Components,
    /// Stop generating after this many events.
    pub max_events: Option<u64>,
    /// Stop the consumer once nothing arrived for this long after the generator finished
    /// (or at once, with no generator in this process).
    pub idle_exit: Option<Duration>,
    /// How often to log progress.
    pub progress_every: Duration,
    /// How long the producer may take to deliver what it has at shutdown.
    pub flush_timeout: Duration,
    /// Hot reload of the pipeline file and scripts.
    pub watch: WatchOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            components: Components::ALL,
            max_events: None,
            idle_exit: None,
            progress_every: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(30),
            watch: WatchOptions::default(),
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    pub stats: Snapshot,
    pub elapsed: Duration,
    /// From the first message consumed to the last batch stored.
    pub consumer_busy: Duration,
    /// From the first batch generated to the last flush (every delivery report in).
    pub generator_busy: Duration,
}

/// Runs the pipeline until `stop` fires, or the run's bounds are reached.
pub async fn run(pipeline: &Pipeline, options: RunOptions, stop: CancellationToken) -> anyhow::Result<RunSummary> {
    start(pipeline.clone(), options, stop).await?.wait().await
}

/// A started pipeline: what can be observed while it runs, and its end.
pub struct Running {
    pub stats: Arc<Stats>,
    /// Hot-reload outcomes.
    pub reload_status: Arc<Mutex<ReloadStatus>>,
    /// The metric set in force (it changes on reload).
    pub metrics: watch::Receiver<Arc<MetricSet>>,
    /// The store the consumer writes to (none without a consumer).
    pub store: Option<Arc<dyn EventStore>>,
    done: tokio::task::JoinHandle<anyhow::Result<RunSummary>>,
}

impl Running {
    /// Waits for the pipeline to finish.
    pub async fn wait(self) -> anyhow::Result<RunSummary> {
        self.done.await?
    }
}

/// Checks, connects and starts every component; returns once the pipeline runs.
pub async fn start(pipeline: Pipeline, options: RunOptions, stop: CancellationToken) -> anyhow::Result<Running> {
    let started = std::time::Instant::now();
    let config = &pipeline.config;
    let components = options.components;
    if !components.generator && !components.consumer && !components.dashboard {
        bail!("nothing to run: choose at least one of generator, consumer, dashboard");
    }
    let embedded_transport = config.kafka.is_embedded();
    let moves_events = components.generator || components.consumer;
    if embedded_transport && moves_events && !(components.generator && components.consumer) {
        bail!(
            "the embedded transport connects the generator and the consumer inside one process, so it needs both; \
             set kafka.bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS, or --kafka) to run them apart"
        );
    }
    // Compile scripts before connecting to anything: a typo should not wait on a network timeout.
    let script = GeneratorScript::load(&config.generator)?;
    let metrics = Arc::new(MetricSet::load(&config.metrics)?);
    let alerts = Arc::new(AlertSet::load(&config.alerting, &config.alerts, &pipeline.path)?);

    let stats = Stats::new();
    let store: Option<Arc<Switchable>> = match components.consumer || components.dashboard {
        true => Some(Switchable::new(store::open(config).await?)),
        false => None,
    };
    log_setup(&pipeline, store.as_deref().map(|s| s as &dyn EventStore), components);
    let (publisher, subscriber) = connect_transport(config, components, &stats, true).await?;

    let g = &config.generator;
    let (generator_tx, generator_rx) =
        watch::channel(GeneratorLive { script, rate: g.rate, batch_size: g.batch_size });
    let (metrics_tx, metrics_rx) = watch::channel(metrics.clone());
    let (alerts_tx, alerts_rx) = watch::channel(alerts.clone());
    let reload_status = Arc::new(Mutex::new(ReloadStatus::default()));
    let reload_stop = CancellationToken::new();
    let (pipeline_tx, pipeline_rx) = watch::channel(pipeline.clone());
    let live = Live { pipeline: pipeline_tx, generator: generator_tx, metrics: metrics_tx, alerts: alerts_tx, status: reload_status.clone() };
    let reloader = reload::spawn(pipeline.clone(), live, options.watch.clone(), reload_stop.clone());

    let progress_stop = CancellationToken::new();
    // Alerting outlives the consumer's last batch, so it sees final values; it stops with the pipeline.
    let alerts_stop = CancellationToken::new();
    let progress = tokio::spawn(telemetry::report_progress(stats.clone(), options.progress_every, progress_stop.clone()));

    let producers_done = CancellationToken::new();
    let (swaps_tx, swaps_rx) = mpsc::channel::<Swap>(1);
    let generator = match publisher {
        Some(publisher) => {
            let task = generate(generator_rx, (publisher, swaps_rx), g.seed, options.clone(), stats.clone(), stop.clone());
            let done = producers_done.clone();
            Some(tokio::spawn(async move {
                let r = task.await;
                done.cancel();
                r
            }))
        }
        None => {
            producers_done.cancel();
            None
        }
    };
    let dashboard = match (components.dashboard, store.clone()) {
        (true, Some(store)) => {
            let sources = crate::dashboard::Sources {
                pipeline: config.name.clone(),
                store,
                metrics: metrics_rx.clone(),
                stats: stats.clone(),
                reload: reload_status.clone(),
            };
            let cfg = config.dashboard.clone();
            let dash_stop = stop.clone();
            Some(tokio::spawn(async move { crate::dashboard::serve(cfg, sources, dash_stop).await }))
        }
        _ => None,
    };
    // Alerts are evaluated where events are consumed: that process sees its own lag and errors.
    // It runs even with no rules, so a reload can add some.
    let alerting = match (components.consumer, store.clone()) {
        (true, Some(store)) => {
            let sources = crate::alert::Sources {
                pipeline: config.name.clone(),
                store,
                metrics: metrics_rx.clone(),
                stats: stats.clone(),
            };
            Some(tokio::spawn(crate::alert::run(sources, alerts_rx, alerts_stop.clone())))
        }
        _ => None,
    };
    let consumer = match (moves_events, store.clone()) {
        (true, Some(store)) => {
            let plane = reconnect::Plane {
                config: config.clone(),
                components,
                stats: stats.clone(),
                store,
                metrics: metrics_rx.clone(),
                until: StopWhen {
                    stop: stop.clone(),
                    idle: options.idle_exit,
                    producers_done: producers_done.clone(),
                    drain: CancellationToken::new(),
                },
                publishers: components.generator.then_some(swaps_tx),
                reload_status: reload_status.clone(),
            };
            Some(tokio::spawn(reconnect::supervise(plane, subscriber, pipeline_rx)))
        }
        _ => None,
    };

    let task_stats = stats.clone();
    let done = tokio::spawn(async move {
        // A failing component stops the others, so the process exits with its error.
        let generator_result = match generator {
            Some(g) => flatten(g.await),
            None => Ok(()),
        };
        if generator_result.is_err() {
            stop.cancel();
        }
        let consumer_result = match consumer {
            Some(c) => flatten(c.await),
            None => Ok(()),
        };
        // The dashboard serves until stopped; when the pipeline ended on its own, stop it too.
        if moves_events {
            stop.cancel();
        }
        let dashboard_result = match dashboard {
            Some(d) => flatten(d.await),
            None => Ok(()),
        };
        alerts_stop.cancel();
        let alerting_result = match alerting {
            Some(a) => flatten(a.await),
            None => Ok(()),
        };
        reload_stop.cancel();
        let _ = reloader.await;
        progress_stop.cancel();
        let _ = progress.await;
        generator_result.context("generator failed")?;
        consumer_result.context("consumer failed")?;
        dashboard_result.context("dashboard failed")?;
        alerting_result.context("alerting failed")?;
        Ok(RunSummary {
            stats: task_stats.snapshot(),
            elapsed: started.elapsed(),
            consumer_busy: task_stats.busy_span(),
            generator_busy: task_stats.publishing_span(),
        })
    });
    Ok(Running { stats, reload_status, metrics: metrics_rx, store: store.map(|s| s as Arc<dyn EventStore>), done })
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.map_err(anyhow::Error::from).and_then(|r| r)
}

/// The generator loop: pace, sample a batch, publish it; on stop, flush what was published.
/// A reloaded script, rate or batch size applies from the next batch.
async fn generate(
    mut live: watch::Receiver<GeneratorLive>,
    (mut publisher, mut swaps): (Box<dyn Publisher>, mpsc::Receiver<Swap>),
    seed: Option<u64>,
    options: RunOptions,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let current = live.borrow_and_update().clone();
    let mut generator = Generator::new(current.script, seed);
    let mut pacer = Pacer::new(current.rate);
    let mut batch_size = current.batch_size;
    let mut remaining = options.max_events.unwrap_or(u64::MAX);
    let mut result = Ok(());
    let mut reloaded = false;
    let mut swap: Option<Swap> = None;
    while remaining > 0 && !stop.is_cancelled() {
        if reloaded || live.has_changed().unwrap_or(false) {
            reloaded = false;
            let next = live.borrow_and_update().clone();
            generator.set_script(next.script);
            pacer.set_rate(next.rate);
            batch_size = next.batch_size;
            tracing::info!(rate = next.rate, batch_size, "generator reloaded");
        }
        if let Some((next, done)) = swap.take().or_else(|| swaps.try_recv().ok()) {
            // A reload changed the transport: what went to the old one is delivered first.
            if let Err(e) = publisher.flush(options.flush_timeout).await {
                result = Err(e);
                break;
            }
            publisher = next;
            let _ = done.send(());
            tracing::info!("generator moved to the reloaded transport");
        }
        let n = (batch_size as u64).min(remaining) as usize;
        tokio::select! {
            _ = pacer.acquire(n) => {}
            // A slow rate may wait long for its next batch; a reload should not.
            _ = live.changed() => {
                reloaded = true;
                continue;
            }
            // The move happens at the top of the loop, between batches.
            Some(next) = swaps.recv() => {
                swap = Some(next);
                continue;
            }
            _ = stop.cancelled() => break,
        }
        let mut batch = Vec::with_capacity(n);
        generator.fill(n, &mut batch);
        if let Err(e) = publisher.publish(batch).await {
            result = Err(e);
            break;
        }
        stats.generated(n);
        remaining -= n as u64;
    }
    let flushed = publisher.flush(options.flush_timeout).await;
    stats.flushed();
    result.and(flushed)
}

/// A new publisher for the generator, and how it says it has moved over.
type Swap = (Box<dyn Publisher>, tokio::sync::oneshot::Sender<()>);

/// Connects the transport `config` names for the components this process runs. A Kafka
/// subscriber is created only `with_subscriber` (joining the group is left for when the
/// consumer starts); the embedded queue always gives both ends.
async fn connect_transport(config: &PipelineConfig, components: Components, stats: &Arc<Stats>, with_subscriber: bool) -> anyhow::Result<Transport> {
    if !(components.generator || components.consumer) {
        return Ok((None, None));
    }
    if config.kafka.is_embedded() {
        let (p, s) = embedded::channel(config.embedded.queue_capacity, config.consumer.batch_size, stats.clone());
        return Ok((Some(Box::new(p)), Some(Box::new(s))));
    }
    let admin = kafka::connect(&config.kafka).await?;
    kafka::ensure_topic(&admin, &config.kafka).await?;
    let p = match components.generator {
        true => Some(Box::new(kafka::KafkaPublisher::new(&config.kafka, stats.clone())?) as Box<dyn Publisher>),
        false => None,
    };
    let s = match components.consumer && with_subscriber {
        true => Some(kafka_subscriber(config, stats)?),
        false => None,
    };
    Ok((p, s))
}

fn kafka_subscriber(config: &PipelineConfig, stats: &Arc<Stats>) -> anyhow::Result<Box<dyn Subscriber>> {
    Ok(Box::new(kafka::KafkaSubscriber::new(&config.kafka, &config.consumer, stats.clone())?))
}

fn log_setup(pipeline: &Pipeline, store: Option<&dyn EventStore>, components: Components) {
    let c = &pipeline.config;
    let transport = if c.kafka.is_embedded() {
        "embedded in-process queue (set KAFKA_BOOTSTRAP_SERVERS or --kafka host:port to use Kafka)".to_string()
    } else {
        format!("Kafka {} topic {:?} group {:?}", c.kafka.bootstrap_servers, c.kafka.topic, c.kafka.consumer_group)
    };
    let store = match store {
        Some(s) if c.mongodb.is_embedded() => {
            format!("{} (set MONGODB_CONNECTION_STRING or --mongodb mongodb://... to use MongoDB)", s.describe())
        }
        Some(s) => s.describe(),
        None => "none (consumer not running here)".to_string(),
    };
    tracing::info!(
        pipeline = %c.name,
        generator = components.generator,
        consumer = components.consumer,
        "transport: {transport}; store: {store}"
    );
}
