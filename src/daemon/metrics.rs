//! The HTTP endpoint (default 127.0.0.1:6782): `/healthz`, `/readyz`, and Prometheus
//! `/metrics`, answered from the driver through the same queries as the API socket.

// Until the daemon wires it in.
#![allow(dead_code)]

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::api::Query;

/// The default listen address of the metrics endpoint.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:6782";

/// Serve HTTP on `listener` until the task is dropped.
pub async fn serve(_listener: TcpListener, _queries: mpsc::Sender<Query>) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
