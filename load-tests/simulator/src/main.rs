use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use touchstream_sim::rules::{compare, RuleParams};
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

/// Generates customers and their journeys as events of Touchstream's input contract (JSON lines),
/// deterministic from a seed, with the ground truth of the world written beside them.
#[derive(Debug, Parser)]
#[command(name = "touchstream-sim", version)]
struct Cli {
    /// World file (TOML), laid over the built-in default world (worlds/default.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Random seed (overrides the world's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of customers (overrides the world's `customers`).
    #[arg(long)]
    customers: Option<u64>,
    /// Customers inside their window at once: bounds memory (overrides the world's `concurrency`).
    #[arg(long)]
    concurrency: Option<u64>,
    /// Output folder: events.jsonl (unless --stdout), truth_conversions.jsonl, truth_carts.jsonl,
    /// truth_channels.json and the effective world.toml.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the events to standard output (then only the truth goes to --out, if given).
    #[arg(long)]
    stdout: bool,
    /// Produce the events to Kafka (bootstrap servers), keyed by customer id.
    #[arg(long, value_name = "HOST:PORT")]
    kafka_brokers: Option<String>,
    /// The topic for --kafka-brokers.
    #[arg(long, value_name = "TOPIC", default_value = "touchstream.events")]
    kafka_topic: String,
    /// With --kafka-brokers: at most this many events per second (default: as fast as possible).
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
    /// Also re-simulate every customer once per channel with that channel removed (same random
    /// numbers) and write the true incremental conversions per channel into truth_channels.json.
    #[arg(long)]
    counterfactual: bool,
    /// After the run, recompute the processor's rules from the events and compare them with the
    /// truth (needs --out without --stdout); writes rules_vs_truth.md and .json.
    #[arg(long)]
    evaluate: bool,
    /// Only compare rules with the truth in an existing output folder.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "stdout", "evaluate"])]
    evaluate_only: Option<PathBuf>,
    /// Print the effective world (TOML) and exit.
    #[arg(long)]
    print_world: bool,
    /// No summary on standard error.
    #[arg(long)]
    quiet: bool,
}

fn evaluate(dir: &Path) -> Result<(), String> {
    let c = compare(dir, RuleParams::default()).map_err(|e| format!("evaluate {}: {e}", dir.display()))?;
    let md = c.to_markdown();
    std::fs::write(dir.join("rules_vs_truth.md"), &md).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&c).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("rules_vs_truth.json"), json + "\n").map_err(|e| e.to_string())?;
    eprintln!("{md}");
    Ok(())
}

fn main_inner(cli: Cli) -> Result<(), String> {
    if let Some(dir) = &cli.evaluate_only {
        return evaluate(dir);
    }
    let mut world = match &cli.config {
        Some(p) => World::from_file(p)?,
        None => World::default_world(),
    };
    if let Some(s) = cli.seed {
        world.seed = s;
    }
    if let Some(c) = cli.customers {
        world.customers = c;
    }
    if let Some(c) = cli.concurrency {
        world.concurrency = c;
    }
    world.validate()?;
    if cli.print_world {
        print!("{}", world.to_toml());
        return Ok(());
    }
    if cli.out.is_none() && !cli.stdout && cli.kafka_brokers.is_none() {
        return Err("nothing to write: give --out DIR, --stdout and/or --kafka-brokers".into());
    }
    if cli.kafka_brokers.is_some() && cli.stdout {
        return Err("--kafka-brokers and --stdout both take the events: choose one".into());
    }
    if cli.evaluate && (cli.out.is_none() || cli.stdout || cli.kafka_brokers.is_some()) {
        return Err("--evaluate reads DIR/events.jsonl: give --out DIR without --stdout".into());
    }
    let model = Model::new(world)?;
    let opts = Options { max_events: cli.max_events, counterfactual: cli.counterfactual };
    let stdout = io::stdout();
    let mut lock;
    let mut file;
    let mut kafka = match &cli.kafka_brokers {
        Some(b) => Some(touchstream_sim::kafka::KafkaSink::new(b, &cli.kafka_topic, cli.rate)?),
        None => None,
    };
    let events: Option<&mut dyn Write> = if let Some(k) = kafka.as_mut() {
        if let Some(dir) = &cli.out {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Some(k)
    } else if cli.stdout {
        lock = stdout.lock();
        Some(&mut lock)
    } else if let Some(dir) = &cli.out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("events.jsonl");
        file = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        Some(&mut file)
    } else {
        None
    };
    let summary = match run(&model, &opts, events, cli.out.as_deref()) {
        Ok(s) => s,
        // A closed pipe (`| head`) is a normal way to stop reading.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(k) = kafka.as_mut() {
        let sent = k.finish()?;
        if !cli.quiet {
            eprintln!("touchstream-sim: {sent} events produced to {}", cli.kafka_topic);
        }
    }
    if !cli.quiet {
        eprintln!(
            "touchstream-sim: {} events, {} customers, {} conversions ({:.2} revenue), {} carts ({:.1}% abandoned), \
             peak {} active customers, {:.2} s, {:.0} events/s{}",
            summary.events,
            summary.customers,
            summary.conversions,
            summary.revenue,
            summary.carts,
            100.0 * summary.abandoned_carts as f64 / summary.carts.max(1) as f64,
            summary.peak_active_customers,
            summary.seconds,
            summary.events_per_second,
            if summary.truncated { " (stopped at --max-events)" } else { "" }
        );
    }
    if cli.evaluate {
        evaluate(cli.out.as_deref().expect("checked above"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match main_inner(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("touchstream-sim: {e}");
            ExitCode::from(2)
        }
    }
}
