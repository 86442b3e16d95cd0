//! The monitoring kit in `deploy/`: Prometheus alert rules checked and unit-tested with promtool
//! (installed by `scripts/test.sh`), and every metric the rules and the Grafana dashboard query
//! exported by a running processor.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(path)
}

fn promtool(args: &[&str]) -> String {
    let out =
        Command::new("promtool").args(args).output().unwrap_or_else(|e| panic!("promtool: {e} (Debian package `prometheus`; scripts/test.sh installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = deploy("prometheus/alerts.yml");
    let text = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(text.contains("SUCCESS: 10 rules found"), "{text}");
    promtool(&["check", "config", deploy("prometheus/prometheus.yml").to_str().unwrap()]);
    let text = promtool(&["test", "rules", deploy("prometheus/alerts_test.yml").to_str().unwrap()]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Metric names a PromQL text refers to (histogram series suffixes removed).
fn metric_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("touchstream_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(name.to_string());
        i = end;
    }
    names
}

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_exported() {
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana/touchstream.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    let mut wanted = metric_names(&rules);
    wanted.extend(exprs.iter().flat_map(|e| metric_names(e)));
    // Names in prose (annotations) are metrics too; none may be misspelt.
    assert!(wanted.len() >= 15, "{wanted:?}");

    let topics = Topics::new("deploy");
    create_topic(&topics.events, 2);
    let t = now_ms() - 5 * DAY;
    let p = producer();
    for n in 0..5 {
        let c = format!("c{n}");
        send_keyed(&p, &topics.events, c.as_bytes(), event(&format!("{c}-1"), &c, t + n, "click", r#","channel":"email""#).as_bytes());
        send_keyed(&p, &topics.events, c.as_bytes(), event(&format!("{c}-2"), &c, t + n + 60_000, "purchase", r#","value":3.0"#).as_bytes());
    }
    send_keyed(&p, &topics.events, b"c0", event("c0-2", "c0", t + 60_000, "purchase", r#","value":3.0"#).as_bytes());
    send_keyed(&p, &topics.events, b"c1", b"not json");
    flush(&p);
    let http = free_addr();
    let proc = Processor::start(&topics, &[("http.enabled", "true"), ("http.listen", &http), ("event_time.idle_timeout", "1h")]);
    // Lag and process gauges come with the state report (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let exported = loop {
        let (code, body) = if std::net::TcpStream::connect(&http).is_ok() { http_get(&http, "/metrics") } else { (0, String::new()) };
        if code == 200 && body.contains("touchstream_consumer_lag{") && body.contains("touchstream_conversions_total 5") {
            break body;
        }
        assert!(Instant::now() < deadline, "metrics never complete:\n{body}\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    let have = metric_names(&exported);
    let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(missing.is_empty(), "queried by deploy/ but not exported: {missing:?}");
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn the_compose_file_gives_the_replicas_settings_check_config_accepts() {
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml")).unwrap();
    // `TOUCHSTREAM__X: value` lines: the shared ones, then each replica's transactional id.
    let settings: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            k.starts_with("TOUCHSTREAM__").then(|| (k.to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    let ids: Vec<&String> = settings.iter().filter(|(k, _)| k == "TOUCHSTREAM__KAFKA__TRANSACTIONAL_ID").map(|(_, v)| v).collect();
    assert!(ids.len() >= 2 && ids.iter().collect::<HashSet<_>>().len() == ids.len(), "distinct transactional ids: {ids:?}");
    let shared: Vec<&(String, String)> = settings.iter().filter(|(k, _)| k != "TOUCHSTREAM__KAFKA__TRANSACTIONAL_ID").collect();
    assert!(shared.len() >= 3, "{shared:?}");
    for id in ids {
        let out = Command::new(env!("CARGO_BIN_EXE_touchstream"))
            .arg("check-config")
            .envs(shared.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("TOUCHSTREAM__KAFKA__TRANSACTIONAL_ID", id)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{id}: {text}");
        assert!(text.contains(&format!("transactional_id = \"{id}\"")) && text.contains("brokers = \"kafka:19092\""), "{text}");
    }
}

#[test]
fn the_kubernetes_manifests_validate_and_their_config_is_accepted() {
    let manifests = deploy("kubernetes/touchstream.yaml");
    // The schema checker is installed beside the interop test's Python client (scripts/test.sh).
    let python = std::env::var("TOUCHSTREAM_TEST_PYTHON").unwrap_or_else(|_| {
        let out = Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/interop-venv.sh")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    let checker = PathBuf::from(&python).with_file_name("kubernetes-validate");
    let out = Command::new(&checker).args(["--strict", manifests.to_str().unwrap()]).output().unwrap_or_else(|e| panic!("{checker:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for kind in ["configmap", "service", "statefulset", "poddisruptionbudget"] {
        assert!(text.contains(&format!("passed for resource {kind}/touchstream")), "{kind}: {text}");
    }
    // The ConfigMap's touchstream.toml is a configuration the processor accepts.
    let yaml = std::fs::read_to_string(&manifests).unwrap();
    let block = yaml.split("touchstream.toml: |\n").nth(1).unwrap().split("\n---").next().unwrap();
    let toml: String = block.lines().map(|l| l.strip_prefix("    ").unwrap_or(l.trim())).collect::<Vec<_>>().join("\n");
    let file = std::env::temp_dir().join(format!("{}.toml", unique("k8s-config")));
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_touchstream")).args(["check-config", "--config", file.to_str().unwrap()]).output().unwrap();
    std::fs::remove_file(&file).ok();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("brokers = \"kafka:9092\""), "{text}");
}

/// `scripts/local-stack.sh` (the compose topology with local processes) on the test broker: two
/// replicas share the input (each owns some of its partitions and processes events), a real
/// Prometheus server scrapes both and evaluates every alert rule of `deploy/` against them
/// without error, and the script's report counts conversions.
#[test]
fn the_local_topology_script_runs_replicas_that_share_the_input_under_prometheus() {
    let prefix = unique("local");
    let events = format!("{prefix}.events");
    create_topic(&events, 6);
    let http_base: u16 = free_addr().rsplit(':').next().unwrap().parse().unwrap();
    let prometheus = free_addr();
    let prom_port = prometheus.rsplit(':').next().unwrap();
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/local-stack.sh"));
    let child = Command::new("bash")
        .arg(script)
        .args(["--replicas", "2", "--seconds", "75", "--no-load", "--http-base", &http_base.to_string(), "--prometheus-port", prom_port])
        .env("BROKERS", brokers())
        .env("TOPIC_PREFIX", &prefix)
        .env("TOUCHSTREAM_BIN", env!("CARGO_BIN_EXE_touchstream"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/local-stack.sh");
    let query = |path: &str| -> serde_json::Value {
        if std::net::TcpStream::connect(&prometheus).is_err() {
            return serde_json::Value::Null;
        }
        // curl: Prometheus answers large responses chunked
        let out = Command::new("curl").args(["-s", &format!("http://{prometheus}{path}")]).output().expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    // the input comes once both replicas own partitions of it
    let replicas = [format!("127.0.0.1:{http_base}"), format!("127.0.0.1:{}", http_base + 1)];
    wait_until("both replicas own input partitions", Duration::from_secs(40), None, || {
        replicas.iter().all(|r| metric(r, "touchstream_assigned_partitions").is_some_and(|n| n > 0.0))
    });
    produce_stream(&events, 6000, 5, 0.0);
    let deadline = Instant::now() + Duration::from_secs(25);
    let (mut up, mut rules, mut drift) = (0, Vec::new(), 0.0);
    while Instant::now() < deadline {
        // the models' drift sample (1 in 8 scored events) fills on both replicas
        drift = replicas.iter().map(|r| metric(r, "touchstream_model_drift_sampled_events").unwrap_or(0.0)).fold(drift, f64::max);
        let v = query("/api/v1/query?query=up");
        up = v["data"]["result"].as_array().map_or(0, |r| r.iter().filter(|s| s["value"][1] == "1").count());
        let v = query("/api/v1/rules");
        let now: Vec<(String, String)> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| (r["name"].as_str().unwrap_or("").to_string(), r["health"].as_str().unwrap_or("").to_string()))
            .collect();
        if !now.is_empty() {
            rules = now;
        }
        if up == 2 && rules.len() == 10 && rules.iter().all(|(_, h)| h == "ok") && drift > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the script failed:\n{stdout}\n{stderr}");
    assert_eq!(up, 2, "Prometheus scrapes both replicas:\n{stderr}");
    assert!(rules.len() == 10 && rules.iter().all(|(_, h)| h == "ok"), "every rule evaluates against the replicas: {rules:?}");
    assert!(drift > 0.0, "the replicas sample their models' input for drift");
    let processed: Vec<f64> = stdout.lines().filter_map(|l| l.strip_prefix("replica ")?.split("events ").nth(1)?.split(',').next()?.parse().ok()).collect();
    assert_eq!(processed.len(), 2, "{stdout}");
    assert!(processed.iter().all(|n| *n > 0.0), "both replicas process input (each owns some partitions): {stdout}");
    assert_eq!(processed.iter().sum::<f64>(), 6000.0, "every event once: {stdout}");
}
