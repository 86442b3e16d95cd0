//! The first contact with the cluster: a metadata request whose failure names its cause.
//! librdkafka retries a failed TLS handshake or SASL exchange quietly and only reports "timed
//! out" to the caller; the reason arrives on the client's error and log callbacks. This context
//! keeps the first such reason, so a wrong password or an untrusted certificate fails the start
//! with what is wrong instead of "cannot reach Kafka".

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::ClientContext;

/// Why the cluster could not be used, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// SASL authentication was refused (wrong user, password, mechanism or token).
    Authentication,
    /// The TLS handshake failed: the broker's certificate is not trusted or does not match.
    UntrustedCertificate,
    /// The TLS handshake failed for another reason (the broker wants a client certificate, the
    /// protocol does not match the listener, ...).
    Tls,
    /// A setting librdkafka cannot use (a missing file, a mechanism not built in).
    Configuration,
    /// Nothing answered: a wrong address, a firewall, or the broker is down.
    Unreachable,
}

impl Cause {
    /// What an operator should look at.
    pub fn hint(self) -> &'static str {
        match self {
            Cause::Authentication => "SASL authentication failed: check sasl.mechanism, sasl.username and sasl.password (kafka.options)",
            Cause::UntrustedCertificate => {
                "the broker's TLS certificate is not trusted: check ssl.ca.location (or ssl.ca.pem) and that the broker address matches its certificate"
            }
            Cause::Tls => {
                "the TLS handshake failed: the listener may require a client certificate (ssl.certificate.location, ssl.key.location) or may not speak TLS (security.protocol)"
            }
            Cause::Configuration => "a client setting cannot be used: see the message",
            Cause::Unreachable => "no broker answered: check kafka.brokers, the network and the broker's listeners",
        }
    }

    /// Classifies one librdkafka error or log message; None when it says nothing about the cause.
    pub fn of(message: &str) -> Option<Cause> {
        let m = message.to_ascii_lowercase();
        if m.contains("sasl authentication") || m.contains("authentication failed") || m.contains("invalid credentials") || m.contains("sasl_authentication") {
            Some(Cause::Authentication)
        } else if m.contains("certificate verify failed")
            || m.contains("unable to get local issuer")
            || m.contains("self-signed")
            || m.contains("self signed")
            || m.contains("broker certificate could not be verified")
        {
            Some(Cause::UntrustedCertificate)
        } else if m.contains("ssl handshake")
            || m.contains("handshake failure")
            || m.contains("certificate required")
            || (m.contains("ssl") && m.contains("alert"))
        {
            Some(Cause::Tls)
        } else if m.contains("not available at build time") || m.contains("no provider") || m.contains("failed to load") || m.contains("no such file") {
            Some(Cause::Configuration)
        } else {
            None
        }
    }
}

/// Client context that keeps the first classified error reported by librdkafka.
#[derive(Default)]
pub struct ProbeContext {
    seen: Mutex<Option<(Cause, String)>>,
}

impl ProbeContext {
    fn note(&self, message: &str) {
        if let Some(cause) = Cause::of(message) {
            let mut seen = self.seen.lock().expect("probe lock");
            if seen.is_none() {
                *seen = Some((cause, message.to_string()));
            }
        }
    }

    pub fn cause(&self) -> Option<(Cause, String)> {
        self.seen.lock().expect("probe lock").clone()
    }
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.note(message);
            tracing::debug!(target: "librdkafka", facility = fac, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note(reason);
        self.note(&error.to_string());
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for ProbeContext {}

/// Fetches metadata of `topic`, retrying until `timeout`; fails as soon as librdkafka has
/// reported a cause that retrying cannot fix (authentication, TLS, configuration).
pub fn fetch_metadata(client: &BaseConsumer<ProbeContext>, topic: &str, timeout: Duration) -> Result<Metadata, (Cause, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(500));
        let result = client.fetch_metadata(Some(topic), attempt);
        match result {
            Ok(md) => return Ok(md),
            Err(e) => {
                // Serves the client's error events (they arrive through its queue).
                let _ = client.poll(Duration::from_millis(100));
                if let Some(found) = client.context().cause() {
                    return Err(found);
                }
                if Instant::now() >= deadline {
                    return Err((Cause::Unreachable, e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build links what secured clusters need: librdkafka refuses these settings at client
    /// creation when OpenSSL, SASL SCRAM, libcurl (OIDC) or zstd are missing.
    #[test]
    fn tls_sasl_oidc_and_zstd_are_built_in() {
        let cases: [&[(&str, &str)]; 4] = [
            &[("security.protocol", "SSL")],
            &[("security.protocol", "SASL_SSL"), ("sasl.mechanisms", "SCRAM-SHA-512"), ("sasl.username", "u"), ("sasl.password", "p")],
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "OAUTHBEARER"),
                ("sasl.oauthbearer.method", "oidc"),
                ("sasl.oauthbearer.client.id", "id"),
                ("sasl.oauthbearer.client.secret", "secret"),
                ("sasl.oauthbearer.token.endpoint.url", "https://idp.invalid/token"),
            ],
            &[("compression.type", "zstd")],
        ];
        for settings in cases {
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1");
            for (k, v) in settings {
                c.set(*k, *v);
            }
            let made: Result<rdkafka::producer::BaseProducer, _> = c.create();
            assert!(made.is_ok(), "{settings:?}: {:?}", made.err());
        }
    }

    #[test]
    fn librdkafka_messages_are_classified() {
        let cases = [
            ("SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256", Some(Cause::Authentication)),
            ("ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (add broker's CA certificate to the Windows Root certificate store) (after 3ms in state SSL_HANDSHAKE)", Some(Cause::UntrustedCertificate)),
            ("ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: ssl/record/rec_layer_s3.c:1605: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116", Some(Cause::Tls)),
            ("Configuration property ssl.ca.location: failed to load", Some(Cause::Configuration)),
            ("127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused", None),
        ];
        for (message, want) in cases {
            assert_eq!(Cause::of(message), want, "{message}");
        }
    }
}
