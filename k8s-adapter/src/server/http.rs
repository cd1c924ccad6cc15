//! `/metrics`, `/healthz` and `/readyz` on one port, served by hyper (already in the tree
//! through kube's client).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::Metrics;
use crate::{Error, Result};

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// Set once the server has reached the API server and started (leading or standing by).
    pub ready: AtomicBool,
    /// Set while this replica leads.
    pub leading: AtomicBool,
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: String, ctype: &'static str| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            let role = if health.leading.load(Ordering::Relaxed) {
                "leading"
            } else {
                "standing by"
            };
            text(StatusCode::OK, format!("ok ({role})\n"), PLAIN)
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into(), PLAIN),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), PLAIN),
    }
}

/// Bind `addr` (an error names it), then serve in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Io {
        what: format!("listen on {addr} for /metrics, /healthz and /readyz (--metrics-address)"),
        source: e,
    })?;
    let bound = listener.local_addr().map_err(|e| Error::Io {
        what: "the metrics listener's address".into(),
        source: e,
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = respond(&req, &metrics, &health);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}
