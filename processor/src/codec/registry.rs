//! A small client of the Confluent Schema Registry REST API (the API Confluent Schema Registry,
//! Apicurio's `/apis/ccompat/v7`, Redpanda and Karapace serve): fetch a schema by id, register a
//! schema under a subject, look one up. Blocking (it runs on the processing thread, and only on a
//! schema-cache miss), over `ureq` with rustls; basic auth and custom CA / client certificates come
//! from `[registry]`. DESIGN.md says why this is not `schema_registry_converter`.

use std::time::Duration;

use serde::Deserialize;

use crate::config::RegistryConfig;

/// Media type of the Confluent API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// What went wrong talking to the registry, classified by what the caller should do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// Down, slow, overloaded or refusing for now (transport error, timeout, 5xx, 429, 401/403 on
    /// a read): retry with backoff, never drop data because of it.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry answered that the schema id or subject does not exist.
    #[error("not found in the schema registry: {0}")]
    NotFound(String),
    /// The registry refused a request for good (incompatible or invalid schema, forbidden).
    #[error("the schema registry refused (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
}

/// Where writer schemas come from (the registry; a fixed map in tests and benchmarks).
pub trait SchemaSource: Send {
    /// The schema text registered under `id`, with its type (`AVRO` when the registry omits it).
    fn schema_by_id(&self, id: u32) -> Result<(String, String), RegistryError>;
}

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("base", &self.base).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

impl RegistryClient {
    /// A client for `cfg.url`. Errors name the config key at fault (unreadable PEM files).
    pub fn new(cfg: &RegistryConfig) -> Result<RegistryClient, String> {
        use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
        let read = |key: &str, path: &str| std::fs::read(path).map_err(|e| format!("config key `{key}`: cannot read {path}: {e}"));
        let mut tls = TlsConfig::builder();
        if !cfg.ca_file.is_empty() {
            let pem = read("registry.ca_file", &cfg.ca_file)?;
            let mut certs: Vec<Certificate<'static>> = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let Ok(PemItem::Certificate(c)) = item {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(format!("config key `registry.ca_file`: no PEM certificate in {}", cfg.ca_file));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        if !cfg.cert_file.is_empty() {
            let pem = read("registry.cert_file", &cfg.cert_file)?;
            let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if chain.is_empty() {
                return Err(format!("config key `registry.cert_file`: no PEM certificate in {}", cfg.cert_file));
            }
            let key_pem = read("registry.key_file", &cfg.key_file)?;
            let key = PrivateKey::from_pem(&key_pem).map_err(|e| format!("config key `registry.key_file`: {e}"))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout.as_duration()))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .user_agent(concat!("touchstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let auth = (!cfg.username.is_empty()).then(|| {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", cfg.username, cfg.password.0));
            format!("Basic {token}")
        });
        Ok(RegistryClient { base: cfg.url.trim().trim_end_matches('/').to_string(), agent, auth })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a request; returns (status, body) or a transport error as `Unavailable`.
    fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String), RegistryError> {
        let url = format!("{}{path}", self.base);
        let unavailable = |e: ureq::Error| RegistryError::Unavailable(format!("{method} {url}: {e}"));
        let mut response = match body {
            None => {
                let mut req = self.agent.get(&url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.call().map_err(unavailable)?
            }
            Some(body) => {
                let mut req = self.agent.post(&url).header("Accept", CONTENT_TYPE).header("Content-Type", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    req = req.header("Authorization", a);
                }
                req.send(body).map_err(unavailable)?
            }
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(unavailable)?;
        Ok((status, text))
    }

    /// GET /schemas/ids/{id}: the schema text and type.
    pub fn fetch(&self, id: u32) -> Result<(String, String), RegistryError> {
        let (status, body) = self.call("GET", &format!("/schemas/ids/{id}"), None)?;
        match status {
            200..=299 => {
                let r: SchemaResponse =
                    serde_json::from_str(&body).map_err(|e| RegistryError::Unavailable(format!("unexpected answer to GET /schemas/ids/{id}: {e}")))?;
                Ok((r.schema, r.schema_type.unwrap_or_else(|| "AVRO".into())))
            }
            404 => Err(RegistryError::NotFound(format!("schema id {id} ({})", error_message(&body)))),
            // Anything else (5xx, 429, an auth problem) may pass: the caller retries.
            _ => Err(RegistryError::Unavailable(format!("GET /schemas/ids/{id}: HTTP {status}: {}", error_message(&body)))),
        }
    }

    /// POST /subjects/{subject}/versions: registers `schema` (or finds it already registered) and
    /// returns its id. An incompatible schema is `Rejected` with status 409.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.post_schema(&format!("/subjects/{subject}/versions"), schema)
    }

    /// POST /subjects/{subject}: the id of `schema` if it is registered under `subject`.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        self.post_schema(&format!("/subjects/{subject}"), schema)
    }

    fn post_schema(&self, path: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
        let (status, text) = self.call("POST", path, Some(body))?;
        match status {
            200..=299 => serde_json::from_str::<IdResponse>(&text)
                .map(|r| r.id)
                .map_err(|e| RegistryError::Unavailable(format!("unexpected answer to POST {path}: {e}: {text}"))),
            404 => Err(RegistryError::NotFound(format!("POST {path}: {}", error_message(&text)))),
            408 | 429 | 500..=599 => Err(RegistryError::Unavailable(format!("POST {path}: HTTP {status}: {}", error_message(&text)))),
            _ => Err(RegistryError::Rejected { status, message: error_message(&text) }),
        }
    }
}

impl SchemaSource for RegistryClient {
    fn schema_by_id(&self, id: u32) -> Result<(String, String), RegistryError> {
        self.fetch(id)
    }
}

/// The registry's error message (Confluent: `{"error_code": 40401, "message": "..."}`), or the body.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<ErrorResponse>(body) {
        Ok(ErrorResponse { message: Some(m), error_code }) => match error_code {
            Some(code) => format!("{m} (error code {code})"),
            None => m,
        },
        _ => body.chars().take(300).collect(),
    }
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }
    /// The wait before the next attempt; doubles each call up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use crate::config::Config;

    /// A one-shot HTTP server answering each connection with the next canned response; returns
    /// its base URL and a handle yielding the requests it saw.
    fn serve(responses: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in responses {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 16384];
                let mut len = 0;
                loop {
                    let n = s.read(&mut buf[len..]).unwrap();
                    len += n;
                    let text = String::from_utf8_lossy(&buf[..len]).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let content_length = text[..head_end]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        if len >= head_end + 4 + content_length {
                            seen.push(text);
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let reply =
                    format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                s.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (url, handle)
    }

    fn client(url: &str, user: &str) -> RegistryClient {
        let mut cfg = Config::defaults().registry;
        cfg.url = url.to_string();
        cfg.username = user.to_string();
        cfg.password = crate::config::Secret("pw".into());
        RegistryClient::new(&cfg).unwrap()
    }

    #[test]
    fn fetches_registers_and_classifies_errors() {
        let (url, server) = serve(vec![
            (200, r#"{"schema":"\"string\""}"#),
            (404, r#"{"error_code":40403,"message":"Schema 9 not found"}"#),
            (503, "busy"),
            (200, r#"{"id":7}"#),
            (409, r#"{"error_code":409,"message":"Schema being registered is incompatible with an earlier schema"}"#),
        ]);
        let c = client(&url, "svc");
        assert_eq!(c.fetch(1).unwrap(), ("\"string\"".to_string(), "AVRO".to_string()));
        assert!(matches!(c.fetch(9), Err(RegistryError::NotFound(m)) if m.contains("Schema 9 not found")));
        assert!(matches!(c.fetch(2), Err(RegistryError::Unavailable(_))));
        assert_eq!(c.register("t-value", "\"string\"").unwrap(), 7);
        let e = c.register("t-value", "\"long\"").unwrap_err();
        assert!(matches!(&e, RegistryError::Rejected { status: 409, message } if message.contains("incompatible")), "{e}");
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("GET /schemas/ids/1 "), "{}", seen[0]);
        assert!(seen[0].contains("authorization: Basic c3ZjOnB3") || seen[0].contains("Authorization: Basic c3ZjOnB3"), "{}", seen[0]);
        assert!(seen[3].starts_with("POST /subjects/t-value/versions "), "{}", seen[3]);
        assert!(seen[3].contains(r#""schema":"\"string\"""#), "{}", seen[3]);
    }

    #[test]
    fn a_registry_that_is_down_is_unavailable() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = client(&format!("http://127.0.0.1:{port}"), "");
        assert!(matches!(c.fetch(1), Err(RegistryError::Unavailable(_))));
        assert!(matches!(c.register("s", "\"string\""), Err(RegistryError::Unavailable(_))));
    }

    #[test]
    fn tls_files_that_cannot_be_used_name_their_key() {
        let dir = std::env::temp_dir().join(format!("touchstream-registry-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let mut cfg = Config::defaults().registry;
        cfg.url = "https://registry:8081".into();
        cfg.ca_file = dir.join("missing.pem").display().to_string();
        assert!(RegistryClient::new(&cfg).unwrap_err().contains("registry.ca_file"));
        cfg.ca_file = not_pem.display().to_string();
        assert!(RegistryClient::new(&cfg).unwrap_err().contains("registry.ca_file"));
        cfg.ca_file.clear();
        cfg.cert_file = not_pem.display().to_string();
        cfg.key_file = not_pem.display().to_string();
        assert!(RegistryClient::new(&cfg).unwrap_err().contains("registry.cert_file"));
        cfg.cert_file.clear();
        cfg.key_file.clear();
        assert!(RegistryClient::new(&cfg).is_ok(), "https with the built-in roots");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
