//! weft's Docker plugin (`weft launch --docker-plugin[=SOCKET]`): libnetwork's remote network
//! driver and remote IPAM driver, served by the daemon on a unix socket in Docker's plugin
//! directory (default [`DEFAULT_PLUGIN_SOCKET`], so the plugin is called `weft`):
//!
//! ```text
//! docker network create -d weft --ipam-driver weft --subnet 10.32.0.0/12 weft
//! docker run --network weft ...
//! ```
//!
//! - `proto`: the protocol without IO (requests decoded into checked calls, the answers'
//!   JSON), property-tested and fuzzed.
//! - `endpoints`: what each call does, run by the pods layer: addresses from the node's IPAM,
//!   endpoints recorded in `pods.json` (source `docker`), veths from `weft_mesh::attach`.
//! - this module: the HTTP/1.1 server (hyper). Only `POST`; a body of at most
//!   [`proto::MAX_BODY_LEN`] bytes, complete within [`BODY_TIMEOUT`]; the call answered within
//!   [`CALL_TIMEOUT`]; at most [`MAX_CLIENTS`] connections (kept alive while Docker reuses
//!   them, closed after [`IDLE_TIMEOUT`] without a request). A request that cannot be decoded
//!   gets `{"Err": "..."}` with status 400 (404 for an unknown method) and changes nothing; a
//!   call that fails gets `{"Err": "..."}` with status 500, which Docker shows as the error.
//! - `names`: with a Docker engine socket (`--docker-socket`), the names of the containers
//!   behind weft's endpoints (for `weft pods`), and the `weft` network created at start if
//!   it is missing.

pub mod endpoints;
pub mod names;
pub mod proto;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::api::{Query, Request, Response};
use super::pods::ask;
use super::slots::{Slot, Slots, Wake};

/// Where Docker looks for plugins' sockets; the file name is the plugin's name.
pub const DEFAULT_PLUGIN_SOCKET: &str = "/run/docker/plugins/weft.sock";
/// Connections served at once.
pub const MAX_CLIENTS: usize = 32;
/// A connection without a request for this long is closed (Docker opens a new one).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to read a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the daemon to answer a call (an allocation may wait for the IPAM state's write;
/// a veth is made).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head.
const MAX_HEAD_LEN: usize = 16 * 1024;
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

type HttpResponse = hyper::Response<Full<Bytes>>;

/// The plugin's listening socket; its file is removed when dropped.
#[derive(Debug)]
pub struct PluginSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl PluginSocket {
    /// Binds `path` (mode 0600; its directory is made with mode 0755 if missing, as Docker's
    /// plugin directory is). A stale socket is replaced, a live one refused.
    pub fn bind(path: &Path) -> anyhow::Result<PluginSocket> {
        Ok(PluginSocket {
            listener: super::api::bind_socket(path, 0o755)?,
            path: path.to_path_buf(),
        })
    }

    /// Serves Docker until the task is dropped, each connection in its own task; the calls go
    /// to the pods layer (`pods`).
    pub async fn serve(&self, pods: mpsc::Sender<Query>) {
        let slots = Slots::new(MAX_CLIENTS);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match slots.admit() {
                    Some(slot) => {
                        tokio::spawn(serve_client(stream, slot, pods.clone()));
                    }
                    None => {
                        debug!("Docker plugin socket busy");
                        tokio::spawn(refuse_busy(stream));
                    }
                },
                Err(e) => {
                    warn!(error = %e, "Docker plugin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for PluginSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: idle (and sheddable) until its first byte, then hyper, keep-alive, with
/// an idle limit between requests.
async fn serve_client(stream: UnixStream, mut slot: Slot, pods: mpsc::Sender<Query>) {
    // Readable: the first byte of a request (or the end of input, which hyper then sees).
    let ready = stream.readable();
    match slot.wait_idle(IDLE_TIMEOUT, ready).await {
        Wake::Ready(Ok(())) => {}
        Wake::Shed => {
            debug!("closing an idle Docker plugin client for a newer one");
            return;
        }
        _ => return,
    }
    let service = service_fn(move |req| {
        let pods = pods.clone();
        async move { Ok::<_, Infallible>(route(req, &pods).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD_LEN)
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %e, "Docker plugin client");
    }
    drop(slot);
}

async fn refuse_busy(mut stream: UnixStream) {
    let body = proto::error_body("weft's Docker plugin is busy; try again").to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        proto::CONTENT_TYPE,
        body.len()
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(answer.as_bytes())).await;
}

fn reply(status: StatusCode, body: &Value) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(proto::CONTENT_TYPE));
    r
}

fn refuse(status: StatusCode, message: &str) -> HttpResponse {
    reply(status, &proto::error_body(message))
}

/// One request: read and decode, hand the call to the pods layer, answer.
async fn route(req: hyper::Request<Incoming>, pods: &mpsc::Sender<Query>) -> HttpResponse {
    if req.method() != Method::POST {
        let mut r = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "weft's Docker plugin takes POST only",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let path = req.uri().path().to_string();
    let limited = Limited::new(req.into_body(), proto::MAX_BODY_LEN);
    let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "request body not complete within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body longer than {} bytes", proto::MAX_BODY_LEN),
            )
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {e}"),
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let call = match proto::decode(&path, &body) {
        Ok(call) => call,
        Err(e) => {
            info!(method = %path.chars().take(80).collect::<String>(), error = %e, "Docker plugin request refused");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return refuse(status, &e.to_string());
        }
    };
    debug!(method = %path, call = ?call, "Docker plugin call");
    match tokio::time::timeout(CALL_TIMEOUT, ask(pods, Request::Docker(call))).await {
        Ok(Response::Docker { docker, .. }) => reply(StatusCode::OK, &docker),
        Ok(Response::Error { error, .. }) => {
            info!(method = %path, %error, "Docker plugin call failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, &error)
        }
        Ok(other) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unexpected answer from the daemon: {other:?}"),
        ),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "the weft daemon did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A pods layer that answers every Docker call with its debug text, or refuses Joins.
    fn pods() -> mpsc::Sender<Query> {
        let (tx, mut rx) = mpsc::channel::<Query>(8);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let answer = match q.request {
                    Request::Docker(proto::Call::Join(_)) => Response::error("no such endpoint"),
                    Request::Docker(call) => Response::Docker {
                        ok: true,
                        docker: serde_json::json!({ "call": format!("{call:?}") }),
                    },
                    other => Response::error(format!("unexpected {other:?}")),
                };
                let _ = q.reply.send(answer);
            }
        });
        tx
    }

    async fn exchange(path: &Path, request: &[u8]) -> (u16, String, String) {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (status, head.to_lowercase(), body.to_string())
    }

    fn post(path: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            proto::CONTENT_TYPE,
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn http_answers_calls_and_refuses_bad_requests_with_err() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plugins/weft.sock");
        let socket = PluginSocket::bind(&path).expect("bind");
        let server = tokio::spawn(async move { socket.serve(pods()).await });

        let (status, head, body) = exchange(&path, &post("/Plugin.Activate", "")).await;
        assert_eq!(status, 200, "{head}{body}");
        assert!(head.contains(proto::CONTENT_TYPE), "{head}");
        assert!(body.contains("Activate"), "{body}");

        let leave = r#"{"NetworkID":"n1","EndpointID":"e1"}"#;
        let (status, _, body) = exchange(&path, &post("/NetworkDriver.Leave", leave)).await;
        assert_eq!(status, 200);
        assert!(body.contains("Leave"), "{body}");

        // A failed call: 500 and Docker's {"Err": ...}.
        let join = r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/x"}"#;
        let (status, _, body) = exchange(&path, &post("/NetworkDriver.Join", join)).await;
        assert_eq!(status, 500);
        assert_eq!(
            serde_json::from_str::<Value>(&body).expect("json"),
            serde_json::json!({"Err": "no such endpoint"})
        );

        // Malformed: 400 with what is wrong; unknown method 404; GET 405; too long 413.
        let (status, _, body) = exchange(
            &path,
            &post("/NetworkDriver.Leave", r#"{"NetworkID":"n1"}"#),
        )
        .await;
        assert_eq!(status, 400);
        let err: Value = serde_json::from_str(&body).expect("json");
        assert!(
            err["Err"]
                .as_str()
                .is_some_and(|e| e.contains("EndpointID")),
            "{body}"
        );
        let (status, _, body) = exchange(&path, &post("/NetworkDriver.Frob", "{}")).await;
        assert_eq!(status, 404);
        assert!(body.contains("Err"), "{body}");
        let (status, head, _) = exchange(
            &path,
            b"GET /Plugin.Activate HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: post"), "{head}");
        let big = "x".repeat(proto::MAX_BODY_LEN + 10);
        let (status, _, body) = exchange(&path, &post("/NetworkDriver.Leave", &big)).await;
        assert_eq!(status, 413, "{body}");

        // Two requests on one kept-alive connection.
        let mut both = post("/Plugin.Activate", "");
        let first = String::from_utf8(both.clone()).expect("utf-8");
        both = first.replace("Connection: close\r\n", "").into_bytes();
        both.extend_from_slice(&post("/NetworkDriver.Leave", leave));
        let (status, _, body) = exchange(&path, &both).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("Activate") && body.contains("Leave"),
            "{body}"
        );

        // A body that never comes: refused within the body deadline.
        let started = std::time::Instant::now();
        let (status, _, _) = exchange(
            &path,
            b"POST /NetworkDriver.Leave HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{",
        )
        .await;
        assert_eq!(status, 408);
        assert!(started.elapsed() < BODY_TIMEOUT + Duration::from_secs(3));

        // A second daemon cannot take the live socket; the file goes with the server.
        assert!(PluginSocket::bind(&path).is_err());
        server.abort();
        let _ = server.await;
        assert!(!path.exists(), "socket file left behind");
    }
}
