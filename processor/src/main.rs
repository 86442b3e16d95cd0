//! `touchstream run` (the processor), `touchstream demo` (embedded, no external services) and
//! `touchstream check-config`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use touchstream::config::{parse_override, Config, LogFormat, Sources};
use touchstream::http::Health;
use touchstream::pipeline::Runner;
use touchstream::{demo, kafka};

#[derive(Parser)]
#[command(name = "touchstream", version, about = "Streaming marketing attribution and cart-abandonment alerts on Kafka")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor as one member of its consumer group.
    Run(ConfigArgs),
    /// Run an embedded demo: in-process Kafka, generated journeys, the processor and a live summary.
    Demo(DemoArgs),
    /// Load and check a configuration, then print it.
    CheckConfig(ConfigArgs),
    /// Ask a running replica's HTTP endpoint for its health (for container HEALTHCHECKs):
    /// exit 0 on 200, 1 otherwise.
    Probe(ProbeArgs),
    /// Request the erasure of customers (GDPR Art. 17, CCPA): one request per customer on
    /// `topics.erasure`; the replica that owns the customer's partition erases them from its state,
    /// the changelog and the scores topic, and writes an audit record (`topics.erasure_audit`).
    Erase(EraseArgs),
    /// Write the input topic (JSON or registry Avro, read_committed) to a JSON-lines file in the
    /// input contract: the log `models/train.py --log` trains on.
    Export(ExportArgs),
    /// The candidate models scored in shadow (`models.candidate`) against the active ones, on a
    /// running replica's HTTP endpoint: `report` prints the comparison on realised outcomes,
    /// `promote` swaps the candidate in at the next batch boundary, `rollback` swaps back.
    Models(ModelsArgs),
}

#[derive(Args)]
struct ModelsArgs {
    /// report, promote or rollback.
    #[arg(value_parser = ["report", "promote", "rollback"])]
    action: String,
    /// host:port of the replica's `http.listen` (each replica compares its own partitions; swap
    /// every replica of the group).
    #[arg(long, default_value = "127.0.0.1:9464")]
    addr: String,
    /// `report`: print the JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The file to write (JSON lines, one event per line).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Only records of the last span (`30d`, `12h`), by record timestamp; default: everything.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Args)]
struct EraseArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// A customer id (repeatable).
    #[arg(long = "customer")]
    customers: Vec<String>,
    /// A file with one customer id per line.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// The partitioner the event producers use, so that a request lands on the partition of the
    /// customer's events: murmur2_random (Java clients' default) or consistent_random (librdkafka's).
    /// Default: `topics.partitioner`.
    #[arg(long)]
    partitioner: Option<String>,
}

#[derive(Args)]
struct ProbeArgs {
    /// host:port of the replica's `http.listen`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    addr: String,
    /// `/healthz` (the process runs) or `/readyz` (it owns its partitions and progresses).
    #[arg(long, default_value = "/healthz")]
    path: String,
}

/// GET `path` from `addr` with a 3 s budget; true on HTTP 200.
fn probe(args: &ProbeArgs) -> Result<bool> {
    let (status, _) = http_call(&args.addr, "GET", &args.path)?;
    Ok(status == 200)
}

/// One HTTP/1.1 request to a replica's endpoint: (status, body).
fn http_call(addr: &str, method: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(3);
    let sock = addr.to_socket_addrs()?.next().with_context(|| format!("no address for {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a server may answer and close as soon as the request head is complete.
    s.write_all(format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    let status = text.get(9..12).and_then(|c| c.parse().ok()).with_context(|| format!("not an HTTP answer from {addr}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn models_command(args: &ModelsArgs) -> Result<()> {
    let (method, path) = match args.action.as_str() {
        "report" => ("GET", "/models"),
        "promote" => ("POST", "/models/promote"),
        _ => ("POST", "/models/rollback"),
    };
    let (status, body) = http_call(&args.addr, method, path).with_context(|| format!("{method} {}{path}", args.addr))?;
    anyhow::ensure!((200..300).contains(&status), "{method} {}{path}: HTTP {status}: {}", args.addr, body.trim());
    if args.action == "report" && !args.json {
        let report: touchstream::lifecycle::compare::Report = serde_json::from_str(&body).context("reading the report")?;
        print!("{}", touchstream::lifecycle::compare::render(&report));
    } else {
        print!("{body}");
    }
    Ok(())
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML config file (embedded defaults apply underneath; TOUCHSTREAM__* env on top).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set kafka.brokers=host:9092 (repeatable; wins over env).
    #[arg(long = "set", value_parser = parse_override)]
    set: Vec<(String, String)>,
    /// Shorthand for --set kafka.brokers=...
    #[arg(long)]
    brokers: Option<String>,
    /// Shorthand for --set kafka.group_id=...
    #[arg(long)]
    group_id: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Generated events per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 3)]
    every: u64,
    /// Seed of the simulated world.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    config: ConfigArgs,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        let mut overrides = self.set.clone();
        if let Some(b) = &self.brokers {
            overrides.push(("kafka.brokers".into(), b.clone()));
        }
        if let Some(g) = &self.group_id {
            overrides.push(("kafka.group_id".into(), g.clone()));
        }
        let sources = Sources::from_process(self.config.as_deref(), overrides)?;
        Ok(Config::load(&sources)?)
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    // Colours only on a terminal: redirected logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// Sets `flag` on SIGHUP (reload the models).
fn on_reload_signal(flag: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the models at the next batch boundary");
            flag.store(true, Ordering::Release);
        }
    });
}

/// Sets `flag` on SIGTERM or Ctrl-C.
fn on_shutdown_signal(flag: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutdown requested: finishing the batch, flushing and committing");
        flag.store(true, Ordering::Release);
    });
}

async fn start_http(cfg: &Config, health: Arc<Health>) -> Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("touchstream_inference_seconds".into()),
            &[0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("touchstream_score_probability".into()),
            &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    if cfg.http.enabled {
        let listener =
            tokio::net::TcpListener::bind(&cfg.http.listen).await.with_context(|| format!("config key `http.listen`: cannot listen on {}", cfg.http.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
        tokio::spawn(touchstream::http::serve(listener, health, Some(handle)));
    }
    Ok(())
}

async fn run(mut cfg: Config) -> Result<()> {
    let health = Arc::new(Health::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    start_http(&cfg, health.clone()).await?;
    on_shutdown_signal(shutdown.clone());
    kafka::admin::ensure_topics(&cfg, touchstream::outputs::topic_specs).await.context("preparing output topics")?;
    let limits = kafka::admin::record_limits(&cfg, &touchstream::outputs::topic_specs(&cfg, 1)).await;
    kafka::admin::fit_batches(&mut cfg, &limits);
    tracing::info!(group = %cfg.kafka.group_id, input = %cfg.topics.events, guarantee = ?cfg.kafka.guarantee, "starting");
    let reload = Arc::new(AtomicBool::new(false));
    on_reload_signal(reload.clone());
    if cfg.models.enabled && cfg.models.watch && !cfg.models.dir.trim().is_empty() {
        touchstream::inference::watch(&cfg.models, reload.clone(), shutdown.clone());
    }
    let stats = tokio::task::spawn_blocking(move || Runner::new(cfg, health, shutdown)?.with_reload(reload).with_record_limits(limits).run()).await??;
    tracing::info!(?stats, "stopped cleanly");
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Command::Run(args) => {
            let cfg = args.load()?;
            init_logging(&cfg);
            rt.block_on(run(cfg))
        }
        Command::Models(args) => models_command(&args),
        Command::Probe(args) => match probe(&args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("probe {}{}: {e}", args.addr, args.path);
                std::process::exit(1)
            }
        },
        Command::Erase(args) => {
            let cfg = args.config.load()?;
            let mut customers = args.customers.clone();
            if let Some(path) = &args.file {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                customers.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
            }
            anyhow::ensure!(!customers.is_empty(), "no customer: give --customer ID or --file ids.txt");
            let partitioner = match &args.partitioner {
                Some(p) => touchstream::kafka::partitioner::Partitioner::parse(p).map_err(|e| anyhow::anyhow!("--partitioner: {e}"))?,
                None => cfg.topics.partitioner,
            };
            let ids = touchstream::pipeline::erasure::send_requests(&cfg, &customers, partitioner).map_err(anyhow::Error::msg)?;
            for id in &ids {
                println!("{id}");
            }
            eprintln!("{} erasure requests sent to {}; audit records follow on {}", ids.len(), cfg.topics.erasure, cfg.topics.erasure_audit);
            Ok(())
        }
        Command::Export(args) => {
            let cfg = args.config.load()?;
            let from = match &args.since {
                Some(s) => Some(touchstream::time::wall_clock_ms() - touchstream::time::Span::parse(s).map_err(anyhow::Error::msg).context("--since")?.ms()),
                None => None,
            };
            let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let done = touchstream::lifecycle::export::export(&cfg, from, &mut out).map_err(anyhow::Error::msg)?;
            eprintln!(
                "exported {} events ({} invalid skipped) from {} partitions of {} to {}",
                done.events,
                done.invalid,
                done.partitions,
                cfg.topics.events,
                args.out.display()
            );
            Ok(())
        }
        Command::CheckConfig(args) => {
            let cfg = args.load()?;
            print!("{}", cfg.to_toml_masked());
            let models = touchstream::inference::ModelSet::load(&cfg.models).context("config section `models`")?;
            let engine_cfg = touchstream::engine::EngineConfig::from_config(&cfg);
            touchstream::alerts::Policy::check(&engine_cfg, models.as_deref()).context("config section `alerts`")?;
            if let Some(m) = models {
                eprintln!("models ok: {} (step {}, attribution {})", m.version, m.step.meta.name, m.attribution.meta.name);
            }
            if let Some(c) = touchstream::inference::ModelSet::load_candidate(&cfg.models)? {
                touchstream::alerts::Policy::check(&engine_cfg, Some(&c)).context("config key `models.candidate`")?;
                eprintln!("candidate models ok: {} (scored in shadow)", c.version);
            }
            eprintln!("config ok");
            Ok(())
        }
        Command::Demo(args) => {
            // The demo serves no HTTP unless asked to (--set http.enabled=true).
            let mut demo_args = args.config.clone();
            demo_args.set.insert(0, ("http.enabled".into(), "false".into()));
            let mut cfg = demo_args.load()?;
            cfg.log.level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
            init_logging(&cfg);
            let opts = demo::DemoOptions { seconds: args.seconds, rate: args.rate, every: args.every, seed: args.seed };
            rt.block_on(async {
                let stop = Arc::new(AtomicBool::new(false));
                on_shutdown_signal(stop.clone());
                let health = Arc::new(Health::default());
                start_http(&cfg, health.clone()).await?;
                tokio::task::spawn_blocking(move || demo::run(cfg, opts, health, stop)).await??;
                Ok(())
            })
        }
    }
}
