//! The `runner` command line: parses arguments and calls into the library.

use clap::{Parser, Subcommand};
use runner::base::de::parse_duration;
use runner::cli::run::{add_scenarios, parse_param, ComponentName, Connection};
use runner::config::Pipeline;
use runner::pipeline::RunOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs streaming analytics pipelines described in TOML files.
///
/// A pipeline declares its records in `[event]`, generates them with a Rhai script, moves them
/// through Kafka (or an embedded in-process queue), computes windowed metrics described by Rhai
/// scripts, and stores records and results in MongoDB (or an embedded SQLite store).
#[derive(Parser)]
#[command(name = "runner", version, propagate_version = true)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter like runner=debug).
    #[arg(long, global = true, env = "RUNNER_LOG", default_value = "info")]
    log: String,
    /// Log lines as human text (colour only on a terminal) or one JSON object per line.
    #[arg(long, global = true, env = "RUNNER_LOG_FORMAT", value_enum, default_value_t = runner::telemetry::logging::LogFormat::Text)]
    log_format: runner::telemetry::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Silence the alerts whose labels match every matcher, for --duration from now; prints
    /// the silence's id. `runner silence add alertname=traffic_drop --duration 2h --comment
    /// "planned checkout outage"`.
    Add {
        /// Label matchers: name=value, name!=value, name=~regex, name!~regex (regexes match the
        /// whole value). alertname and severity are labels of every alert.
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long the silence lasts.
        #[arg(long, short = 'd', default_value = "1h")]
        duration: String,
        /// Why (required; shown on the dashboard and in the list).
        #[arg(long, short = 'c')]
        comment: String,
    },
    /// List the active and pending silences.
    List {
        /// Also those that ended in the last five days.
        #[arg(long)]
        expired: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Expire {
        /// The silence's id (from `add` or `list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum LookupAction {
    /// Fill a lookup's collection from a CSV (with a header row) or JSON-lines file, replacing
    /// what it held, in the pipeline's store (MongoDB, or the embedded store). The rows are
    /// checked as the table loads them first (the key column, one row per key, max_rows); a
    /// running pipeline reads them at its next `refresh`.
    Load {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The `[[lookup]]`'s name.
        lookup: String,
        /// The rows: `.csv`, or `.jsonl` / `.ndjson` (one JSON object per line).
        file: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until Ctrl-C (graceful: flush the producer, store what was read, commit
    /// offsets), or until --for / --events / --exit-when-idle says it is done. The pipeline file
    /// and its scripts are watched: a good edit applies between batches, a broken one is
    /// reported and the running version stays. SIGHUP reloads too.
    Run(RunArgs),
    /// Check a pipeline file and compile every script it references, without connecting.
    /// Prints `ok`, or each error as file:line:column; exits non-zero on error.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Run the pipeline tests: feed each test's events through the metric scripts and compare
    /// the metrics with the expected values. Exits non-zero if any test fails.
    Test {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The tests [default: the pipeline's name with .test.toml, next to it].
        #[arg(long)]
        tests: Option<PathBuf>,
    },
    /// Measure each stage's throughput beside its baseline (plain Rust, raw rdkafka, raw MongoDB
    /// driver) and print a table. Kafka and MongoDB sections run when their address is given.
    Bench {
        /// The pipeline file (its generator script and metrics are measured).
        pipeline: PathBuf,
        /// Events per run.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Runs per figure; the median is reported with min and max.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Kafka bootstrap servers for the Kafka sections.
        #[arg(long, env = "RUNNER_BENCH_KAFKA")]
        kafka: Option<String>,
        /// MongoDB connection string for the MongoDB sections (needs --kafka too).
        #[arg(long, env = "RUNNER_BENCH_MONGODB")]
        mongodb: Option<String>,
        /// Print JSON instead of a table, to compare runs.
        #[arg(long)]
        json: bool,
        /// Run only these sections (comma-separated) [default: all].
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<runner::cli::bench::Section>,
    },
    /// Print every metric's current value (the window ending now), read from the store.
    Metrics {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A past window instead of the current one, read from the final results written when
        /// it closed: an RFC 3339 time (`2026-12-02T10:15:00Z`) or how long ago (`10m`).
        #[arg(long)]
        at: Option<String>,
        /// MongoDB connection string, or `embedded` [default: mongodb.uri].
        #[arg(long)]
        mongodb: Option<String>,
        /// Folder of the embedded store [default: embedded.data_dir].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Recompute one metric's past panes from history (the Kafka log, or the embedded store's raw
    /// rows) and replace the stored ones, e.g. after fixing its script: a script change that keeps
    /// the metric's shape applies to new events only, and this brings the past in line. A running
    /// pipeline reads the new partials at once; final results of the windows touched are written
    /// again. Panes live traffic still changes (newer than the metric's lateness plus one slide)
    /// are left to it. A metric added or redefined by a reload needs none of this: it is filled
    /// from history by itself.
    Backfill {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The metric to recompute.
        #[arg(long)]
        metric: String,
        /// How far back to recompute (bounded by what the log or the raw store still holds).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        since: Duration,
        /// Recompute panes older than this [default: the metric's lateness plus one slide].
        #[arg(long, value_parser = parse_duration)]
        until: Option<Duration>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Try a draft metric before adding it: run it over the last --since of the pipeline's
    /// history (the Kafka log, or the embedded store's raw records) into a scratch store, and
    /// print its value now, its value per window over the range beside the running metric of
    /// the same name, and what its script made of a few records. Nothing stored is changed.
    /// The dashboard's workbench (/workbench) does the same.
    Try {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The draft: a TOML file with the metric's keys (name, script, reducer, window, ...),
        /// its `script` relative to that file.
        #[arg(long)]
        metric: PathBuf,
        /// How much history to read.
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        since: Duration,
        /// Print the whole result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Start a pipeline for data you already have: read a sample (a JSON lines file, or a few
    /// hundred messages of a Kafka topic), infer the record's fields and types, a likely id,
    /// time and key, and write NAME.toml, NAME/generator.rhai (draws records like the sample's)
    /// and NAME/count.rhai (one count metric). Check the [event] section it writes, then
    /// `runner validate NAME.toml`.
    Init {
        /// The pipeline's name (also its file, topic and database names).
        name: String,
        /// A sample as JSON lines, one record per line.
        #[arg(
            long,
            conflicts_with = "from_topic",
            required_unless_present = "from_topic"
        )]
        from_file: Option<PathBuf>,
        /// A Kafka topic to sample (read from the start, nothing committed); needs --kafka.
        #[arg(long, requires = "kafka")]
        from_topic: Option<String>,
        /// Kafka bootstrap servers for --from-topic.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
        kafka: Option<String>,
        /// How many records to learn from at most.
        #[arg(long, default_value_t = 500)]
        sample: usize,
        /// The folder to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Lookup tables kept in the store (`[[lookup]] collection = "..."`).
    Lookup {
        #[command(subcommand)]
        action: LookupAction,
    },
    /// Silence alerts of a running runner through its dashboard API, as amtool silences an
    /// Alertmanager: a silenced alert still changes state and shows on the dashboard, but
    /// nothing is sent for it until the silence ends. Adding and expiring need an operator
    /// token (`[dashboard] token`, or one of `[dashboard.tokens]` with role = "operator").
    Silence {
        /// The runner's dashboard address.
        #[arg(
            long,
            global = true,
            env = "RUNNER_URL",
            default_value = "http://127.0.0.1:8050"
        )]
        url: String,
        /// The dashboard token.
        #[arg(long, global = true, env = "DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// A live terminal view of a running runner (rates along the flow, consumer lag per
    /// partition, every metric's current value, firing and pending alerts, where events are
    /// dropped), read from its dashboard's JSON API, like `vector top`. q, Esc or Ctrl-C quits.
    Top {
        /// The runner's dashboard address.
        #[arg(long, env = "RUNNER_URL", default_value = "http://127.0.0.1:8050")]
        url: String,
        /// The dashboard token, if it has one.
        #[arg(long, env = "DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How often to read and redraw.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        interval: Duration,
    },
    /// Print the configuration reference (Markdown): every key of the pipeline file with its
    /// type, default, environment override and reload behaviour, from the config types' doc
    /// comments. `docs/reference.md` is this output.
    Docs,
    /// Print generated events as JSON lines to stdout (no Kafka, no store), to look at the data.
    Generate {
        /// The pipeline file.
        pipeline: PathBuf,
        /// How many events to print.
        #[arg(long, short = 'n', default_value_t = 10)]
        count: u64,
        /// Seed for a reproducible sample [default: the pipeline's generator.seed, else random].
        #[arg(long)]
        seed: Option<u64>,
        /// Run a scenario of the file (`[[generator.scenario]]`) on the simulated clock (repeatable).
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Write the pipeline's [event] format (Avro and Protobuf length-delimited, as
        /// `runner run --source` reads them) instead of JSON lines for people.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Which components to run in this process, comma- or space-separated (`all` for every one).
    /// A consumer also evaluates the alert rules.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "generator,consumer,dashboard")]
    components: Vec<ComponentName>,
    /// Events per second (0 = as fast as possible) [default: generator.rate in the pipeline file].
    #[arg(long)]
    generation_rate: Option<f64>,
    /// Events per generated batch [default: generator.batch_size in the pipeline file].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Address the dashboard serves on [default: dashboard.listen in the pipeline file].
    #[arg(long, value_name = "HOST:PORT")]
    dashboard_listen: Option<String>,
    /// Run a scenario of the pipeline file (`[[generator.scenario]]`: an incident that changes
    /// the traffic for a while, timed from the start), e.g. --scenario viral_item; repeatable
    /// [default: generator.scenarios in the pipeline file]. `--scenario demo` on the shipped
    /// interactions pipeline shows a fast day, the funnel and one alert's whole life in 5 minutes.
    #[arg(
        long = "scenario",
        value_name = "NAME",
        env = "RUNNER_SCENARIO",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Set a generator param the script sees, e.g. --param DEVICES=500 (repeatable) [default:
    /// generator.params in the pipeline file].
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Stop after this long, e.g. 30s, 5m [default: run until Ctrl-C].
    #[arg(long = "for", value_parser = parse_duration)]
    run_for: Option<Duration>,
    /// Read records from this file instead of generating them (`-` for stdin): JSON lines, or
    /// the pipeline's [event] format length-delimited (as `runner generate --raw` writes it).
    /// The run ends when the input does, unless --follow. Sets [source] file.
    #[arg(long, value_name = "FILE")]
    source: Option<PathBuf>,
    /// With --source, wait for more records at the end of the file, as `tail -f`.
    #[arg(long, requires = "source")]
    follow: bool,
    /// Stop generating after this many events [default: no limit].
    #[arg(long)]
    events: Option<u64>,
    /// Stop consuming once it has caught up (read to the end of its partitions) and nothing
    /// arrived for this long after generating finished, e.g. 5s [default: keep consuming].
    #[arg(long, value_parser = parse_duration)]
    exit_when_idle: Option<Duration>,
    #[command(flatten)]
    connection: Connection,
    /// How often to log progress.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    progress_every: Duration,
    /// Do not watch the pipeline file and scripts for changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
    /// Also check the files every this often, for file systems without change events (e.g. 2s).
    #[arg(long, value_parser = parse_duration)]
    watch_poll: Option<Duration>,
}

/// At most two glibc malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise. By default glibc
/// gives threads that allocate at once arenas of their own (up to eight per core), and the
/// consumer's threads (tokio, rayon workers, librdkafka, the MongoDB driver) each allocate and
/// free metric state: memory freed in one arena is not reused by another. Measured on the
/// memory run (1.2M records, 204,000 active keys, embedded), alternating binaries: peak RSS
/// 438-500 MB with glibc's default, 306 MB with two arenas, CPU time the same (36-38 s);
/// mimalloc gave 441 MB (386 MB purging at once) at the same CPU, so no new allocator.
fn fewer_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called first thing in main, before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    fewer_malloc_arenas();
    let cli = Cli::parse();
    if let Err(e) = runner::telemetry::logging::init(&cli.log, cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Validate { pipeline } => match runner::pipeline::validate(&pipeline) {
            Ok(_) => {
                println!("ok");
                Ok(())
            }
            Err(problems) => {
                for p in &problems.0 {
                    eprintln!("error: {p}");
                }
                return ExitCode::FAILURE;
            }
        },
        Command::Generate {
            pipeline,
            count,
            seed,
            scenarios,
            raw,
        } => Pipeline::load(&pipeline)
            .map_err(anyhow::Error::from)
            .and_then(|mut p| {
                if seed.is_some() {
                    p.config.generator.seed = seed;
                }
                p.add_override(move |c| add_scenarios(c, &scenarios))?;
                runner::cli::commands::generate(&p, count, raw, &mut std::io::stdout().lock())
            }),
        Command::Run(args) => run(args),
        Command::Docs => {
            print!("{}", runner::cli::docs::reference());
            Ok(())
        }
        Command::Lookup {
            action:
                LookupAction::Load {
                    pipeline,
                    lookup,
                    file,
                    connection,
                },
        } => load_lookup(pipeline, &lookup, &file, &connection),
        Command::Silence { url, token, action } => silence(
            runner::cli::silence::Api {
                url,
                token: token.filter(|t| !t.is_empty()),
            },
            action,
        ),
        Command::Top {
            url,
            token,
            interval,
        } => runner::cli::top::run(runner::cli::top::TopOptions {
            url,
            token: token.filter(|t| !t.is_empty()),
            interval,
        }),
        Command::Init {
            name,
            from_file,
            from_topic,
            kafka,
            sample,
            dir,
            force,
        } => init(&name, from_file, from_topic, kafka, sample, &dir, force),
        Command::Bench {
            pipeline,
            events,
            runs,
            kafka,
            mongodb,
            json,
            only,
        } => bench(
            pipeline,
            runner::cli::bench::BenchOptions {
                events,
                runs,
                kafka,
                mongodb,
                only,
            },
            json,
        ),
        Command::Test { pipeline, tests } => match pipeline_tests(pipeline, tests) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Metrics {
            pipeline,
            json,
            at,
            mongodb,
            data_dir,
        } => show_metrics(pipeline, json, at, mongodb, data_dir),
        Command::Backfill {
            pipeline,
            metric,
            since,
            until,
            connection,
        } => backfill(pipeline, &metric, since, until, &connection),
        Command::Try {
            pipeline,
            metric,
            since,
            json,
            connection,
        } => try_metric(pipeline, &metric, since, json, &connection),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::load(&args.pipeline)?;
    // Flags override the file now and after every reload.
    let connection = args.connection.clone();
    pipeline.add_override(move |c| connection.apply(c))?;
    if let Some(r) = args.generation_rate {
        pipeline.add_override(move |c| c.generator.rate = r)?;
    }
    if let Some(b) = args.batch_size {
        pipeline.add_override(move |c| c.generator.batch_size = b)?;
    }
    if let Some(listen) = args.dashboard_listen.clone() {
        pipeline.add_override(move |c| c.dashboard.listen = listen.clone())?;
    }
    let scenarios = args.scenarios.clone();
    if !scenarios.is_empty() {
        pipeline.add_override(move |c| add_scenarios(c, &scenarios))?;
    }
    for (name, value) in args.params {
        pipeline.add_override(move |c| {
            c.generator
                .params
                .insert(name.clone(), runner::generator::Param::parse(&value));
        })?;
    }
    if let Some(file) = args.source.clone() {
        let follow = args.follow;
        pipeline.add_override(move |c| {
            c.source.file = Some(file.clone());
            c.source.follow = follow;
        })?;
    }
    let components = runner::cli::run::components(&args.components);
    let options = RunOptions {
        components,
        max_events: args.events,
        idle_exit: args.exit_when_idle,
        progress_every: args.progress_every,
        watch: runner::pipeline::WatchOptions {
            enabled: !args.no_watch,
            poll: args.watch_poll,
            ..Default::default()
        },
        ..RunOptions::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let stop = CancellationToken::new();
            spawn_stop_signals(stop.clone(), args.run_for);
            let summary = runner::pipeline::run(&pipeline, options, stop).await?;
            let s = summary.stats;
            let secs = summary.elapsed.as_secs_f64();
            tracing::info!(
                generated = s.generated,
                stored = s.stored,
                duplicates = s.duplicates,
                rejected = s.rejected,
                delivery_failed = s.delivery_failed,
                seconds = format!("{secs:.1}"),
                "finished"
            );
            Ok(())
        })
}

fn bench(
    path: PathBuf,
    options: runner::cli::bench::BenchOptions,
    json: bool,
) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(&path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let figures = rt.block_on(runner::cli::bench::run(&pipeline, &options))?;
    print_json_or_table(json, &figures, |out| {
        runner::cli::bench::print_table(&figures, out)
    })
}

/// Prints `value` as JSON for machines, or the table for people.
fn print_json_or_table<T: serde::Serialize>(
    json: bool,
    value: &T,
    table: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        table(&mut out)?;
    }
    Ok(())
}

/// Prints each test's result; true when all passed.
fn pipeline_tests(path: PathBuf, tests: Option<PathBuf>) -> anyhow::Result<bool> {
    let pipeline = Pipeline::load(&path)?;
    let tests = tests.unwrap_or_else(|| runner::cli::testing::default_test_file(&path));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcomes = rt.block_on(runner::cli::testing::run_tests(&pipeline, &tests))?;
    let failed = outcomes.iter().filter(|o| !o.failures.is_empty()).count();
    for o in &outcomes {
        if o.failures.is_empty() {
            println!("ok      {}", o.name);
        } else {
            println!("FAILED  {}", o.name);
            for f in &o.failures {
                println!("        {f}");
            }
        }
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    Ok(failed == 0)
}

fn show_metrics(
    path: PathBuf,
    json: bool,
    at: Option<String>,
    mongodb: Option<String>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::load(&path)?;
    if let Some(m) = mongodb {
        pipeline.config.mongodb.uri = m;
    }
    if let Some(d) = data_dir {
        pipeline.config.embedded.data_dir = d;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let values = match at {
        None => rt.block_on(runner::cli::commands::metrics(
            &pipeline,
            chrono::Utc::now().timestamp_millis(),
        ))?,
        Some(at) => {
            let at_ms =
                runner::cli::commands::parse_at(&at, chrono::Utc::now().timestamp_millis())?;
            let (values, not_final) =
                rt.block_on(runner::cli::commands::metrics_at(&pipeline, at_ms))?;
            if !not_final.is_empty() {
                eprintln!("no final result stored for that window of {} (not closed yet, or older than the results): computed from the stored partials", not_final.join(", "));
            }
            values
        }
    };
    print_json_or_table(json, &values, |out| {
        runner::cli::commands::print_metrics(&values, out)
    })
}

fn backfill(
    path: PathBuf,
    metric: &str,
    since: Duration,
    until: Option<Duration>,
    connection: &Connection,
) -> anyhow::Result<()> {
    let (pipeline, rt) = one_shot(&path, connection)?;
    let started = std::time::Instant::now();
    let done = rt.block_on(runner::cli::commands::backfill(
        &pipeline, metric, since, until,
    ))?;
    println!(
        "{metric}: {} events recomputed into {} partials, {} final results rewritten, in {:.1} s",
        done.events,
        done.partials,
        done.results,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn try_metric(
    path: PathBuf,
    draft: &Path,
    since: Duration,
    json: bool,
    connection: &Connection,
) -> anyhow::Result<()> {
    let (pipeline, rt) = one_shot(&path, connection)?;
    let tried = rt.block_on(runner::cli::commands::try_metric(&pipeline, draft, since))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tried)?);
    } else {
        print!("{}", runner::cli::commands::tried_text(&tried));
    }
    match tried.problems.is_empty() {
        true => Ok(()),
        false => Err(anyhow::anyhow!("the draft does not compile")),
    }
}

/// The pipeline file with the connection flags applied, and a runtime for a command that
/// connects, does one thing and exits.
fn one_shot(
    path: &Path,
    connection: &Connection,
) -> anyhow::Result<(Pipeline, tokio::runtime::Runtime)> {
    let mut pipeline = Pipeline::load(path)?;
    connection.apply(&mut pipeline.config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok((pipeline, rt))
}

fn load_lookup(
    path: PathBuf,
    lookup: &str,
    file: &Path,
    connection: &Connection,
) -> anyhow::Result<()> {
    let (pipeline, rt) = one_shot(&path, connection)?;
    let (n, into) = rt.block_on(runner::cli::commands::load_lookup(&pipeline, lookup, file))?;
    println!("{lookup}: {n} rows of {} written to {into}", file.display());
    Ok(())
}

/// Ctrl-C (or SIGTERM) stops gracefully; a second Ctrl-C exits at once. `--for` stops after a while.
fn spawn_stop_signals(stop: CancellationToken, run_for: Option<Duration>) {
    if let Some(d) = run_for {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            tracing::info!("--for {d:?} reached; stopping");
            stop.cancel();
        });
    }
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        tracing::info!("stopping: finishing in-flight batches and committing offsets (Ctrl-C again to quit at once)");
        stop.cancel();
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("quitting without finishing; uncommitted events will be consumed again");
        std::process::exit(130);
    });
}

/// `runner init`: sample, infer, write, and say what was written.
fn init(
    name: &str,
    file: Option<PathBuf>,
    topic: Option<String>,
    kafka: Option<String>,
    sample: usize,
    dir: &std::path::Path,
    force: bool,
) -> anyhow::Result<()> {
    let (records, source) = match (file, topic) {
        (Some(f), _) => (
            runner::cli::init::read_jsonl(&f, sample)?,
            f.display().to_string(),
        ),
        (None, Some(t)) => {
            let servers = kafka.unwrap_or_default();
            (
                runner::cli::init::read_topic(&servers, &t, sample, Duration::from_secs(10))?,
                format!("topic {t} at {servers}"),
            )
        }
        (None, None) => anyhow::bail!("give --from-file or --from-topic"),
    };
    let guess = runner::cli::init::infer(&records)?;
    let written = runner::cli::init::write(dir, name, &guess, &source, force)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "learned from {} records of {source}:", guess.records)?;
    writeln!(
        out,
        "  id = {:?}{}, time = {:?}{}, key = {:?}",
        guess.id,
        if guess.id_added { " (added)" } else { "" },
        guess.time,
        if guess.time_added { " (added)" } else { "" },
        guess.key.as_deref().unwrap_or("none")
    )?;
    for f in [&written.pipeline, &written.generator, &written.metric] {
        writeln!(out, "wrote {}", f.display())?;
    }
    writeln!(out, "next: runner validate {}", written.pipeline.display())?;
    Ok(())
}

fn silence(api: runner::cli::silence::Api, action: SilenceAction) -> anyhow::Result<()> {
    use runner::cli::silence;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    rt.block_on(async {
        match action {
            SilenceAction::Add {
                matchers,
                duration,
                comment,
            } => silence::add(&api, &matchers, &duration, &comment, &mut out).await,
            SilenceAction::List { expired, json } => {
                silence::list(&api, expired, json, &mut out).await
            }
            SilenceAction::Expire { id } => silence::expire(&api, &id, &mut out).await,
        }
    })
}
