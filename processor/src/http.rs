//! The HTTP endpoint (hyper, HTTP/1.1, a connection cap and timeouts): `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (partitions assigned and state loaded), and the model comparison: `GET /models` (the
//! shadow report, JSON), `POST /models/promote` and `POST /models/rollback` (swap the candidate and
//! the active models at the next batch boundary).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
    /// The shadow comparison and swap requests (`models.candidate`).
    pub models: crate::lifecycle::compare::ModelsControl,
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

/// Bounds of the HTTP endpoint: it shares the process's file descriptors with librdkafka, so a
/// crowd of slow or idle clients must not be able to hold them.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time to receive a request's headers.
    pub read_timeout: Duration,
    /// Time for a whole connection: request, response and the client reading it.
    pub total_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_connections: 64, read_timeout: Duration::from_secs(5), total_timeout: Duration::from_secs(15) }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` (HTTP/1.1 by hyper) until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Option<PrometheusHandle>) {
    serve_with(listener, health, metrics, HttpLimits::default()).await
}

pub async fn serve_with(listener: TcpListener, health: Arc<Health>, metrics: Option<PrometheusHandle>, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Over the cap: close at once rather than queue (the descriptor is freed now).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let (status, body, ctype) = route(req.method(), req.uri().path(), &health, metrics.as_ref());
                let response = Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .header("connection", "close")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.total_timeout, connection).await;
        });
    }
}

fn route(method: &hyper::Method, path: &str, health: &Health, metrics: Option<&PrometheusHandle>) -> (StatusCode, String, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const DOWN: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
    let post = method == hyper::Method::POST;
    match path {
        "/models" => match health.models.report() {
            Some(json) => (StatusCode::OK, json, "application/json"),
            None => (StatusCode::NOT_FOUND, "no candidate models (models.candidate)\n".into(), TEXT),
        },
        "/models/promote" | "/models/rollback" if !post => (StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into(), TEXT),
        "/models/promote" | "/models/rollback" if health.models.report().is_none() => {
            (StatusCode::CONFLICT, "no candidate models to swap with (models.candidate)\n".into(), TEXT)
        }
        "/models/promote" | "/models/rollback" => {
            health.models.request_swap();
            (StatusCode::ACCEPTED, "swap requested: the candidate and the active models change roles at the next batch boundary\n".into(), TEXT)
        }
        "/healthz" if health.is_failed() => (DOWN, "failed\n".into(), TEXT),
        "/healthz" => (StatusCode::OK, "ok\n".into(), TEXT),
        "/readyz" if health.is_ready() => (StatusCode::OK, "ready\n".into(), TEXT),
        "/readyz" if health.is_registry_down() => (DOWN, "not ready: schema registry unavailable\n".into(), TEXT),
        "/readyz" if health.is_stalled() => (DOWN, "not ready: no progress (input is waiting, nothing committed)\n".into(), TEXT),
        "/readyz" => (DOWN, "not ready\n".into(), TEXT),
        "/metrics" => match metrics {
            Some(h) => (StatusCode::OK, h.render(), "text/plain; version=0.0.4"),
            None => (StatusCode::NOT_FOUND, "metrics are off\n".into(), TEXT),
        },
        _ => (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n".into(), TEXT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_health_and_readiness() {
        let h = Health::default();
        assert_eq!(route(&hyper::Method::GET, "/healthz", &h, None).0, StatusCode::OK);
        assert_eq!(route(&hyper::Method::GET, "/readyz", &h, None).0, StatusCode::SERVICE_UNAVAILABLE);
        h.set_ready(true);
        assert_eq!(route(&hyper::Method::GET, "/readyz", &h, None).0, StatusCode::OK);
        h.set_registry_down(true);
        assert_eq!(
            route(&hyper::Method::GET, "/readyz", &h, None),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: schema registry unavailable\n".into(), "text/plain; charset=utf-8")
        );
        h.set_registry_down(false);
        assert_eq!(route(&hyper::Method::GET, "/readyz", &h, None).0, StatusCode::OK);
        h.set_failed();
        assert_eq!(route(&hyper::Method::GET, "/readyz", &h, None).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(route(&hyper::Method::GET, "/healthz", &h, None).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(route(&hyper::Method::GET, "/nope", &h, None).0, StatusCode::NOT_FOUND);
        assert_eq!(route(&hyper::Method::GET, "/models", &h, None).0, StatusCode::NOT_FOUND);
        assert_eq!(route(&hyper::Method::POST, "/models/promote", &h, None).0, StatusCode::CONFLICT);
        h.models.publish(Some(&crate::lifecycle::compare::Board::default().report("a", "b")));
        assert_eq!(route(&hyper::Method::GET, "/models", &h, None).0, StatusCode::OK);
        assert_eq!(route(&hyper::Method::GET, "/models/promote", &h, None).0, StatusCode::METHOD_NOT_ALLOWED);
        assert!(!h.models.take_swap_request());
        assert_eq!(route(&hyper::Method::POST, "/models/rollback", &h, None).0, StatusCode::ACCEPTED);
        assert!(h.models.take_swap_request() && !h.models.take_swap_request());
    }

    /// Reads until the peer closes the connection; the bytes read.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    }

    #[tokio::test]
    async fn slow_clients_cannot_hold_more_than_the_cap() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        let limits = HttpLimits { max_connections: 4, read_timeout: Duration::from_millis(300), total_timeout: Duration::from_secs(2) };
        tokio::spawn(serve_with(listener, health, None, limits));
        // 40 clients send half a request and wait.
        let mut slow = Vec::new();
        for _ in 0..40 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
            slow.push(s);
        }
        // Every one of them is closed by the server: at once beyond the cap, after the read
        // timeout within it. None gets an answer to its unfinished request.
        for s in &mut slow {
            let got = tokio::time::timeout(Duration::from_secs(10), until_closed(s)).await.expect("closed by the server");
            assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{}", String::from_utf8_lossy(&got));
        }
        // And the endpoint still answers a well-behaved client.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let got = String::from_utf8_lossy(&until_closed(&mut s).await).to_string();
        assert!(got.starts_with("HTTP/1.1 200 OK") && got.ends_with("ok\n"), "{got}");
    }
}
