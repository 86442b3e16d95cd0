use super::*;

fn load(file: Option<&str>, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(&Sources {
        file: file.map(|t| ("test.toml".to_string(), t.to_string())),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        overrides: flags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

#[test]
fn defaults_are_complete_and_valid() {
    let c = Config::defaults();
    assert_eq!(c.topics.events, "touchstream.events");
    assert_eq!(c.journey.max_touchpoints, 64);
    assert_eq!(c.attribution.time_decay_half_life.ms(), 7 * 86_400_000);
    assert_eq!(c.alerts.target_delay.ms(), 2 * 3_600_000);
    assert_eq!(c.alerts.safety_net.ms(), 24 * 3_600_000);
}

#[test]
fn layers_apply_in_order() {
    let c = load(
        Some("[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"g-file\"\n[processing]\nmax_batch_events = 7\n"),
        &[("TOUCHSTREAM__KAFKA__GROUP_ID", "g-env"), ("TOUCHSTREAM__PROCESSING__MAX_BATCH_EVENTS", "9"), ("OTHER", "x")],
        &[("kafka.group_id", "g-flag")],
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "file:9092");
    assert_eq!(c.kafka.group_id, "g-flag");
    assert_eq!(c.processing.max_batch_events, 9);
}

#[test]
fn string_keys_stay_strings_from_env() {
    let c = load(None, &[("TOUCHSTREAM__KAFKA__GROUP_ID", "1234")], &[]).unwrap();
    assert_eq!(c.kafka.group_id, "1234");
}

#[test]
fn passthrough_options_from_file_and_env() {
    let c = load(
        Some("[kafka.options]\n\"security.protocol\" = \"SSL\"\n"),
        &[("TOUCHSTREAM__KAFKA__PRODUCER__LINGER_MS", "5")],
        &[("kafka.consumer.fetch.min.bytes", "1"), ("kafka.consumer.\"fetch.wait.max.ms\"", "20")],
    )
    .unwrap();
    assert_eq!(c.kafka.options["security.protocol"], "SSL");
    assert_eq!(c.kafka.producer["linger.ms"], "5");
    assert_eq!(c.kafka.consumer["fetch.min.bytes"], "1");
    // quoted as in TOML
    assert_eq!(c.kafka.consumer["fetch.wait.max.ms"], "20");
    assert!(!c.kafka.consumer.contains_key("\"fetch.wait.max.ms\""));
}

#[test]
fn errors_name_the_key() {
    let e = load(Some("[journey]\nlookbak = \"3d\"\n"), &[], &[]).unwrap_err().to_string();
    assert!(e.contains("lookbak"), "{e}");
    let e = load(None, &[("TOUCHSTREAM__ATTRIBUTION__WINDOW", "soon")], &[]).unwrap_err().to_string();
    assert!(e.contains("attribution.window"), "{e}");
    let e = load(None, &[], &[("processing.max_batch_events", "many")]).unwrap_err().to_string();
    assert!(e.contains("processing.max_batch_events"), "{e}");
    let e = load(None, &[], &[("attribution.time_decay_half_life", "0")]).unwrap_err().to_string();
    assert!(e.contains("attribution.time_decay_half_life"), "{e}");
    let e = load(None, &[], &[("topics.alerts", "touchstream.dlq")]).unwrap_err().to_string();
    assert!(e.contains("topics.dlq") && e.contains("topics.alerts"), "{e}");
    let e = load(None, &[], &[("kafka.guarantee", "maybe_once")]).unwrap_err().to_string();
    assert!(e.contains("kafka.guarantee"), "{e}");
    let e = load(Some("[kafka.options]\n\"group.id\" = \"x\"\n"), &[], &[]).unwrap_err().to_string();
    assert!(e.contains("kafka.options.group.id"), "{e}");
    let e = load(Some("[kafka\n"), &[], &[]).unwrap_err().to_string();
    assert!(e.contains("test.toml"), "{e}");
    let e = load(None, &[], &[("formats.events", "avro")]).unwrap_err().to_string();
    assert!(e.contains("registry.url"), "{e}");
    let e = load(None, &[], &[("formats.events", "protobuf")]).unwrap_err().to_string();
    assert!(e.contains("formats.events"), "{e}");
    let e = load(None, &[], &[("formats.alerts", "avro"), ("registry.url", "registry:8081")]).unwrap_err().to_string();
    assert!(e.contains("registry.url"), "{e}");
    let e = load(None, &[("TOUCHSTREAM__ALERTS__ABANDON_THRESHOLD", "1.5")], &[]).unwrap_err().to_string();
    assert!(e.contains("alerts.abandon_threshold"), "{e}");
    let e = load(None, &[], &[("alerts.safety_net", "1h")]).unwrap_err().to_string();
    assert!(e.contains("alerts.safety_net"), "{e}");
    let e = load(None, &[], &[("topics.retention.dlq", "a week")]).unwrap_err().to_string();
    assert!(e.contains("topics.retention.dlq"), "{e}");
    let e = load(None, &[("TOUCHSTREAM__TOPICS__RETENTION__ALERTS", "0s")], &[]).unwrap_err().to_string();
    assert!(e.contains("topics.retention.alerts"), "{e}");
    let e = load(None, &[], &[("topics.partitioner", "random")]).unwrap_err().to_string();
    assert!(e.contains("topics.partitioner"), "{e}");
    // the key of earlier versions is refused by name
    let e = load(None, &[], &[("alerts.inactivity_timeout", "30m")]).unwrap_err().to_string();
    assert!(e.contains("inactivity_timeout"), "{e}");
}

#[test]
fn retention_of_created_topics() {
    let cfg = load(None, &[], &[("topics.retention.conversions", "90d"), ("topics.retention.erasure_audit", "forever")]).unwrap();
    let kept: std::collections::HashMap<&str, Option<i64>> = cfg.topics.retention.parsed().unwrap().into_iter().collect();
    assert_eq!(kept["topics.retention.conversions"], Some(90 * 86_400_000));
    assert_eq!(kept["topics.retention.dlq"], Some(7 * 86_400_000), "the default");
    assert_eq!(kept["topics.retention.erasure_audit"], Some(-1));
    let specs = crate::outputs::topic_specs(&cfg, 4);
    let of = |name: &str| specs.iter().find(|s| s.name == name).unwrap().retention_ms;
    assert_eq!(of(&cfg.topics.conversions), Some(90 * 86_400_000));
    assert_eq!(of(&cfg.topics.dlq), Some(7 * 86_400_000));
    assert_eq!(of(&cfg.topics.scores), None, "compacted upsert topics keep the broker's default");
}

#[test]
fn registry_settings_from_env_and_the_password_is_not_printed() {
    let c = load(
        Some("[formats]\nevents = \"auto\"\nconversions = \"avro\"\n"),
        &[("TOUCHSTREAM__REGISTRY__URL", "https://registry:8081"), ("TOUCHSTREAM__REGISTRY__USERNAME", "svc"), ("TOUCHSTREAM__REGISTRY__PASSWORD", "hunter2")],
        &[],
    )
    .unwrap();
    assert_eq!(c.formats.events, InputFormat::Auto);
    assert_eq!(c.formats.conversions, OutputFormat::Avro);
    assert_eq!(c.formats.alerts, OutputFormat::Json);
    assert_eq!(c.registry.password.0, "hunter2");
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
    assert!(Config::defaults().formats.events == InputFormat::Json && !Config::defaults().formats.uses_registry());
}

#[test]
fn printed_config_is_toml_that_loads_back_with_secrets_masked() {
    let c = load(
        Some("[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"s3cret-pw\"\n\"ssl.key.pem\" = \"PRIVATE\"\n\"ssl.ca.location\" = \"/etc/ca.pem\"\n[kafka.producer]\n\"sasl.oauthbearer.client.secret\" = \"oidc-secret\"\n"),
        &[("TOUCHSTREAM__REGISTRY__URL", "https://registry:8081"), ("TOUCHSTREAM__REGISTRY__USERNAME", "svc"), ("TOUCHSTREAM__REGISTRY__PASSWORD", "hunter2")],
        &[],
    )
    .unwrap();
    let printed = c.to_toml_masked();
    for secret in ["s3cret-pw", "PRIVATE", "oidc-secret", "hunter2"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert!(printed.contains("/etc/ca.pem") && printed.contains("SASL_SSL"), "{printed}");
    let back = load(Some(&printed), &[], &[]).expect("the printed config loads back");
    assert_eq!(back.to_toml_masked(), printed);
    assert_eq!(back.kafka.options["sasl.password"], MASK);
    assert!(is_secret_property("ssl.key.password") && !is_secret_property("ssl.key.location") && !is_secret_property("bootstrap.servers"));
}
