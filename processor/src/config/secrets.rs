//! Secrets in the configuration: never printed (`check-config`, logs), masked in the TOML that
//! `check-config` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use super::Config;

/// A string that is never printed (`check-config`, logs).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

/// Personal data on the outputs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// A secret: when set, the conversions topic carries HMAC-SHA256(this, customer id) (hex) as
    /// its key and `customer_id` instead of the id (alerts keep the real id for messaging).
    #[serde(default)]
    pub analytics_id_key: Secret,
}

impl PrivacyConfig {
    /// The id the analytics outputs carry for `customer`: itself, or its keyed hash.
    pub fn analytics_id(&self, customer: &str) -> Option<String> {
        if self.analytics_id_key.0.is_empty() {
            return None;
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.analytics_id_key.0.as_bytes());
        Some(ring::hmac::sign(&key, customer.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// What a secret is printed as.
pub const MASK: &str = "***";

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", if self.0.is_empty() { "" } else { MASK })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { MASK })
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, ...). Paths to files (`*.location`) are not.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !n.ends_with(".location") && (n.contains("password") || n.contains("secret") || n.contains("key") || n.contains("jaas") || n == "sasl.oauthbearer.config")
}

pub(super) fn masked_properties<S: Serializer>(props: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(props.iter().map(|(k, v)| (k, if is_secret_property(k) { MASK } else { v.as_str() })))
}

impl Config {
    /// The configuration as TOML that `--config` reads back, every secret masked.
    pub fn to_toml_masked(&self) -> String {
        toml::to_string(self).expect("the configuration serialises to TOML")
    }
}
