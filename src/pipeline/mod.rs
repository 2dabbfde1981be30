//! Wires the components the command line asks for and runs them until done.
//!
//! Everything that can fail on bad input (config, scripts, connections) is checked before any
//! event is generated, so a bad setup never half-starts the pipeline.

mod backends;
mod compile;
mod diff;
mod reconnect;
mod reload;
mod shutdown;
pub mod workbench;

pub use backends::{codec, fetch_collections, has_collections, history, open_store, partitions};
pub use compile::{compile, compile_with, validate, Compiled, Problems};
pub use diff::{Diff, Effect, TABLE as RELOAD_TABLE};

use crate::aggregate::MetricSet;
use crate::config::Pipeline;
use crate::consumer::StopWhen;
use crate::generator::{GeneratorTask, Swap};
use crate::store::{self, Store, Switchable};
use crate::telemetry::{self, ReloadStatus, Snapshot, Stats};
use crate::transport::TransportKind;
use anyhow::bail;
use backends::{connect_transport, Transport};
use reload::Live;
use shutdown::{Shutdown, Step, Tasks};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use reload::WatchOptions;

/// Which parts of the pipeline this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub generator: bool,
    pub consumer: bool,
    pub dashboard: bool,
    /// Evaluates the alert rules against the store (a consumer process does too: it sees its
    /// own lag and errors).
    pub alerting: bool,
}

impl Components {
    /// Generator and consumer, no dashboard (tests and benchmarks).
    pub const ALL: Components = Components {
        generator: true,
        consumer: true,
        dashboard: false,
        alerting: true,
    };
    /// Only the generator.
    pub const GENERATOR: Components = Components {
        generator: true,
        consumer: false,
        dashboard: false,
        alerting: false,
    };
    /// Only the consumer.
    pub const CONSUMER: Components = Components {
        generator: false,
        consumer: true,
        dashboard: false,
        alerting: true,
    };
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
pub async fn run(
    pipeline: &Pipeline,
    options: RunOptions,
    stop: CancellationToken,
) -> anyhow::Result<RunSummary> {
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
    pub store: Option<Arc<dyn Store>>,
    done: tokio::task::JoinHandle<anyhow::Result<RunSummary>>,
}

impl Running {
    /// Waits for the pipeline to finish.
    pub async fn wait(self) -> anyhow::Result<RunSummary> {
        self.done.await?
    }
}

/// Checks, connects and starts every component; returns once the pipeline runs.
pub async fn start(
    pipeline: Pipeline,
    options: RunOptions,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let seen = reload::snapshot(&pipeline);
    let mut options = options;
    if pipeline.config.generator.script.is_none() && options.components.generator {
        // A pipeline without a generator consumes what Kafka carries.
        tracing::info!("the pipeline has no [generator] script: this process does not generate");
        options.components.generator = false;
    }
    if pipeline.config.transport_kind() == TransportKind::File && options.components.generator {
        tracing::info!("records come from [source] file: this process does not generate");
        options.components.generator = false;
    }
    let built = build(pipeline, &options).await?;
    Ok(spawn(built, seen, options, stop))
}

/// A pipeline compiled and connected, with nothing running yet.
struct Built {
    compiled: Compiled,
    /// The lookup collections' documents the metrics were compiled with.
    fetched: crate::aggregate::Fetched,
    stats: Arc<Stats>,
    store: Option<Arc<Switchable>>,
    transport: Transport,
    /// The results topic's producer, when `[results] topic` is set and this process consumes.
    results_topic: Option<crate::aggregate::results::TopicResults>,
    /// The dashboard's templates and address, when this process serves it.
    dashboard: Option<crate::dashboard::Bound>,
}

/// Everything that can fail on bad input, before anything runs: the components asked for, the
/// scripts (compiled first: a typo should not wait on a network timeout), then the connections.
async fn build(pipeline: Pipeline, options: &RunOptions) -> anyhow::Result<Built> {
    let components = options.components;
    if !components.generator
        && !components.consumer
        && !components.dashboard
        && !components.alerting
    {
        bail!("nothing to run: choose at least one of generator, consumer, dashboard, alerting");
    }
    let config = &pipeline.config;
    let in_process = backends::in_process(config);
    if config.generator.script.is_none() && in_process && components.consumer {
        bail!(
            "this pipeline has no [generator] script and runs on the embedded queue, which carries only what this process \
             generates: set kafka.bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS, or --kafka) to consume from Kafka, or add \
             [generator] script = \"gen.rhai\""
        );
    }
    let moves_events = components.generator || components.consumer;
    if in_process && moves_events && !(components.generator && components.consumer) {
        bail!(
            "the embedded transport connects the generator and the consumer inside one process, so it needs both; \
             set kafka.bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS, or --kafka) to run them apart"
        );
    }
    let compiled = compile(pipeline)?;
    let config = &compiled.pipeline.config;
    let stats = Stats::new();
    let store = match components.consumer || components.dashboard || components.alerting {
        true => Some(Switchable::new(
            store::open(
                &config.mongodb,
                &config.embedded,
                &config.retention,
                &compiled.schema,
            )
            .await?,
        )),
        false => None,
    };
    // Bound before anything moves: a port in use is an error now, not a page that never comes up.
    let dashboard = match components.dashboard {
        true => Some(crate::dashboard::bind(&config.dashboard).await?),
        false => None,
    };
    // The lookup collections are read now, and the metrics compiled again with their rows (the
    // first compile checked everything else before any connection).
    let (compiled, fetched) = match &store {
        Some(s) if backends::has_collections(config) => {
            let fetched = backends::fetch_collections(config, &**s).await?;
            (compile_with(compiled.pipeline.clone(), &fetched)?, fetched)
        }
        _ => (compiled, Default::default()),
    };
    let config = &compiled.pipeline.config;
    backends::log_setup(
        config,
        store.as_deref().map(|s| s as &dyn crate::store::StateStore),
        components,
    );
    let transport = connect_transport(config, components, &stats, true).await?;
    let results_topic = match components.consumer {
        true => {
            crate::aggregate::results::TopicResults::connect(
                &config.kafka,
                &config.results,
                &config.event,
            )
            .await?
        }
        false => None,
    };
    Ok(Built {
        compiled,
        fetched,
        stats,
        store,
        transport,
        results_topic,
        dashboard,
    })
}

/// Starts every task of a built pipeline, each with the shutdown signal of its step.
fn spawn(
    built: Built,
    seen: reload::Snapshot,
    options: RunOptions,
    stop: CancellationToken,
) -> Running {
    let started = std::time::Instant::now();
    let Built {
        compiled,
        fetched,
        stats,
        store,
        transport: (publisher, subscriber),
        results_topic,
        dashboard,
    } = built;
    let components = options.components;
    let pipeline = compiled.pipeline.clone();
    let config = &pipeline.config;
    let shutdown = Shutdown::new(stop);
    let mut tasks = Tasks::new(shutdown.clone());

    // Reload publishes each new version on these; the components watch the receiving ends.
    let (generator_tx, generator_rx) =
        match reload::generator_settings(&compiled).map(watch::channel) {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
    let (metrics_tx, metrics_rx) = watch::channel(compiled.metrics.clone());
    let (alerts_tx, alerts_rx) = watch::channel(compiled.alerts.clone());
    let (dashboard_tx, dashboard_rx) = watch::channel(config.dashboard.clone());
    let (pipeline_tx, pipeline_rx) = watch::channel(pipeline.clone());
    let reload_status = Arc::new(Mutex::new(ReloadStatus::default()));
    let live = Live {
        pipeline: pipeline_tx,
        generator: generator_tx,
        metrics: metrics_tx,
        alerts: alerts_tx,
        dashboard: dashboard_tx,
        status: reload_status.clone(),
    };
    let reloader = reload::spawn(
        pipeline.clone(),
        seen,
        live,
        reload::LookupRows {
            store: store
                .clone()
                .map(|s| s as Arc<dyn crate::store::Collections>),
            fetched,
        },
        options.watch.clone(),
        shutdown.signal(Step::Reload),
    );
    tasks.spawn(Step::Reload, async move { Ok(reloader.await?) });
    telemetry::memory::spawn_trimmer(shutdown.signal(Step::Progress));
    let progress = telemetry::report_progress(
        stats.clone(),
        options.progress_every,
        shutdown.signal(Step::Progress),
    );
    tasks.spawn(Step::Progress, async move {
        progress.await;
        Ok(())
    });

    // Fires when this process's generator is done (at once without one), for the idle exit.
    let producers_done = CancellationToken::new();
    let (swaps_tx, swaps_rx) = mpsc::channel::<Swap>(1);
    match (publisher, generator_rx) {
        (Some(publisher), Some(settings)) => {
            let task = GeneratorTask {
                settings,
                publisher,
                swaps: swaps_rx,
                seed: config.generator.seed,
                max_events: options.max_events,
                flush_timeout: options.flush_timeout,
                stats: stats.clone(),
            };
            let (signal, done) = (shutdown.signal(Step::Generator), producers_done.clone());
            tasks.spawn(Step::Generator, async move {
                let r = task.run(signal).await;
                done.cancel();
                r
            });
        }
        _ => producers_done.cancel(),
    }
    if let (Some(bound), Some(store)) = (dashboard, store.clone()) {
        let workbench = workbench::PipelineWorkbench::new(
            pipeline_rx.clone(),
            metrics_rx.clone(),
            Some(store.clone()),
        );
        let sources = crate::dashboard::Sources {
            pipeline: config.name.clone(),
            store,
            metrics: metrics_rx.clone(),
            stats: stats.clone(),
            reload: reload_status.clone(),
            transport: backends::transport_label(config),
            generator: components.generator,
            workbench: Some(Arc::new(workbench)),
        };
        tasks.spawn(
            Step::Dashboard,
            crate::dashboard::serve(
                bound,
                dashboard_rx,
                sources,
                shutdown.signal(Step::Dashboard),
            ),
        );
    }
    // Alerts are evaluated where events are consumed (that process sees its own lag and errors)
    // or in a process asked to; it runs even with no rules, so a reload can add some.
    if let (true, Some(store)) = (components.alerting, store.clone()) {
        let sources = crate::alert::Sources {
            pipeline: config.name.clone(),
            store,
            metrics: metrics_rx.clone(),
            stats: stats.clone(),
        };
        tasks.spawn(
            Step::Alerting,
            crate::alert::run(sources, alerts_rx, shutdown.signal(Step::Alerting)),
        );
    }
    // Final window results are written where events are consumed: that process has the
    // partials; every consumer writes the same documents.
    if let (true, Some(store)) = (components.consumer, store.clone()) {
        let current = pipeline_rx.clone();
        let partitions: crate::aggregate::results::Partitions = Arc::new(move || {
            let config = current.borrow().config.clone();
            Box::pin(async move { backends::partitions(&config).await })
        });
        use crate::aggregate::results::{Chain, ResultsOutput, StoreResults};
        let in_store: Arc<dyn ResultsOutput> = Arc::new(StoreResults(store.clone()));
        let output: Arc<dyn ResultsOutput> = match results_topic {
            Some(topic) => Arc::new(Chain(vec![Arc::new(topic), in_store])),
            None => in_store,
        };
        let writer = crate::aggregate::results::run(
            store,
            output,
            metrics_rx.clone(),
            partitions,
            Duration::from_secs(1),
            shutdown.signal(Step::Results),
        );
        tasks.spawn(Step::Results, async move {
            writer.await;
            Ok(())
        });
    }
    if let (true, Some(store)) = (components.generator || components.consumer, store.clone()) {
        let plane = reconnect::Plane {
            config: config.clone(),
            components,
            stats: stats.clone(),
            store,
            metrics: metrics_rx.clone(),
            until: StopWhen {
                stop: shutdown.signal(Step::Consumer),
                idle: options.idle_exit,
                producers_done,
                drain: CancellationToken::new(),
            },
            publishers: components.generator.then_some(swaps_tx),
            reload_status: reload_status.clone(),
        };
        tasks.spawn(
            Step::Consumer,
            reconnect::supervise(plane, subscriber, pipeline_rx),
        );
    }

    let task_stats = stats.clone();
    let done = tokio::spawn(async move {
        tasks.finish().await?;
        Ok(RunSummary {
            stats: task_stats.snapshot(),
            elapsed: started.elapsed(),
            consumer_busy: task_stats.busy_span(),
            generator_busy: task_stats.publishing_span(),
        })
    });
    Running {
        stats,
        reload_status,
        metrics: metrics_rx,
        store: store.map(|s| s as Arc<dyn Store>),
        done,
    }
}
