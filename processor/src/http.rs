//! A minimal HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (partitions assigned and state loaded).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Liveness and readiness, set by the runner.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    failed: AtomicBool,
    /// The schema registry is needed and unavailable (consumption of the partitions that need it
    /// is paused until it is back).
    registry_down: AtomicBool,
    /// Input is waiting but nothing has been committed for `processing.stall_timeout`.
    stalled: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_failed() && !self.is_registry_down() && !self.is_stalled()
    }
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
    }
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }
    pub fn set_registry_down(&self, down: bool) {
        self.registry_down.store(down, Ordering::Release);
    }
    pub fn is_registry_down(&self) -> bool {
        self.registry_down.load(Ordering::Acquire)
    }
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Option<PrometheusHandle>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut len = 0;
            while len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, ctype) = route(path, &health, metrics.as_ref());
            let head = format!("HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn route(path: &str, health: &Health, metrics: Option<&PrometheusHandle>) -> (&'static str, String, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path.split('?').next().unwrap_or(path) {
        "/healthz" if health.is_failed() => ("503 Service Unavailable", "failed\n".into(), TEXT),
        "/healthz" => ("200 OK", "ok\n".into(), TEXT),
        "/readyz" if health.is_ready() => ("200 OK", "ready\n".into(), TEXT),
        "/readyz" if health.is_registry_down() => ("503 Service Unavailable", "not ready: schema registry unavailable\n".into(), TEXT),
        "/readyz" if health.is_stalled() => ("503 Service Unavailable", "not ready: no progress (input is waiting, nothing committed)\n".into(), TEXT),
        "/readyz" => ("503 Service Unavailable", "not ready\n".into(), TEXT),
        "/metrics" => match metrics {
            Some(h) => ("200 OK", h.render(), "text/plain; version=0.0.4"),
            None => ("404 Not Found", "metrics are off\n".into(), TEXT),
        },
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".into(), TEXT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_health_and_readiness() {
        let h = Health::default();
        assert_eq!(route("/healthz", &h, None).0, "200 OK");
        assert_eq!(route("/readyz", &h, None).0, "503 Service Unavailable");
        h.set_ready(true);
        assert_eq!(route("/readyz", &h, None).0, "200 OK");
        h.set_registry_down(true);
        assert_eq!(route("/readyz", &h, None), ("503 Service Unavailable", "not ready: schema registry unavailable\n".into(), "text/plain; charset=utf-8"));
        h.set_registry_down(false);
        assert_eq!(route("/readyz", &h, None).0, "200 OK");
        h.set_failed();
        assert_eq!(route("/readyz", &h, None).0, "503 Service Unavailable");
        assert_eq!(route("/healthz", &h, None).0, "503 Service Unavailable");
        assert_eq!(route("/nope", &h, None).0, "404 Not Found");
    }
}
