//! Layering: the embedded defaults, then a config file, then `TOUCHSTREAM__*` environment
//! variables, then `key.path=value` flags, merged into one TOML tree that is deserialized into
//! [`Config`] and checked.

use std::path::Path;

use toml::Value;

use super::{key_err, Config, ConfigError, DEFAULTS, ENV_PREFIX};

/// Where a configuration comes from, lowest precedence first.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Contents of a config file and its name for messages.
    pub file: Option<(String, String)>,
    /// Environment variables (all of them; only `TOUCHSTREAM__*` are read).
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides from flags.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// Reads `path` (if given) and the process environment.
    pub fn from_process(path: Option<&Path>, overrides: Vec<(String, String)>) -> Result<Sources, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
                Some((p.display().to_string(), text))
            }
            None => None,
        };
        Ok(Sources { file, env: std::env::vars().collect(), overrides })
    }
}

impl Config {
    /// Layers the sources over the defaults, deserializes and checks invariants.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut tree: Value = DEFAULTS.parse::<toml::Table>().map(Value::Table).expect("embedded defaults parse");
        if let Some((name, text)) = &sources.file {
            let file: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax { path: name.clone(), message: e.to_string() })?;
            touchstream_contract::merge_toml(&mut tree, Value::Table(file));
        }
        for (name, value) in &sources.env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                set_path(&mut tree, &path, value, true)?;
            }
        }
        for (key, value) in &sources.overrides {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            set_path(&mut tree, &path, value, false)?;
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            key_err(&key, inner)
        })?;
        config.validate()?;
        Ok(config)
    }
}

/// Sets one key from the environment or a flag. Values keep the type of the default they replace;
/// keys inside the librdkafka passthrough tables are strings (from env, `_` stands for `.`).
fn set_path(tree: &mut Value, path: &[String], raw: &str, from_env: bool) -> Result<(), ConfigError> {
    let dotted = path.join(".");
    if path.iter().any(|p| p.is_empty()) {
        return Err(key_err(&dotted, "empty key segment"));
    }
    let passthrough = path.len() >= 3 && path[0] == "kafka" && matches!(path[1].as_str(), "options" | "consumer" | "producer");
    let mut node = tree;
    let (last, parents) = if passthrough { (path[2..].join("."), &path[..2]) } else { (path[path.len() - 1].clone(), &path[..path.len() - 1]) };
    for seg in parents {
        let table = node.as_table_mut().ok_or_else(|| key_err(&dotted, "is not a table"))?;
        node = table.entry(seg.clone()).or_insert_with(|| Value::Table(Default::default()));
    }
    let table = node.as_table_mut().ok_or_else(|| key_err(&dotted, "is not a table"))?;
    let last = if passthrough && from_env { last.replace('_', ".") } else { last };
    // a flag may quote the librdkafka key as TOML does: kafka.consumer."fetch.min.bytes"
    let last = match last.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(unquoted) if passthrough && !unquoted.is_empty() => unquoted.to_string(),
        _ => last,
    };
    // optional keys without a default that are not strings
    const OPTIONAL_NUMBERS: [&str; 1] = ["alerts.abandon_threshold"];
    let value = match table.get(&last) {
        _ if passthrough => Value::String(raw.to_string()),
        None if OPTIONAL_NUMBERS.contains(&dotted.as_str()) => raw.trim().parse::<f64>().map(Value::Float).unwrap_or_else(|_| Value::String(raw.to_string())),
        Some(Value::String(_)) | None => Value::String(raw.to_string()),
        Some(_) => format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| Value::String(raw.to_string())),
    };
    table.insert(last, value);
    Ok(())
}

/// Parses `key.path=value` flag arguments.
pub fn parse_override(arg: &str) -> Result<(String, String), String> {
    let (k, v) = arg.split_once('=').ok_or_else(|| format!("`{arg}` is not key.path=value"))?;
    Ok((k.trim().to_string(), v.to_string()))
}
