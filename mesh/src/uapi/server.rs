//! The UAPI socket server: `/var/run/wireguard/IFNAME.sock`, one task per connection.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::parse::{format_errno, format_status, parse_operation, parse_set, Operation};
use crate::userspace::DeviceHandle;
use crate::{Error, Result};

/// Where `wg` looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Longest request line accepted (the longest valid one is an IPv6 endpoint with a zone).
const MAX_LINE: u64 = 1024;
/// Most bytes in one `set` request (a `wg setconf` with many thousands of peers fits).
const MAX_REQUEST: usize = 64 << 20;

/// The socket path of interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

/// A listening UAPI socket. Dropping it stops serving and removes the socket file.
#[derive(Debug)]
pub struct UapiServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl UapiServer {
    /// Listen on [`socket_path`] for `device`. The directory is created (0755) if missing;
    /// the socket is 0700, root's only, as wireguard-go makes it. A stale socket left by a
    /// dead process is replaced; one that still answers is not.
    pub async fn listen(device: DeviceHandle) -> Result<Self> {
        Self::listen_at(socket_path(device.name()), device).await
    }

    /// As [`Self::listen`], at another path (for tests).
    pub async fn listen_at(path: PathBuf, device: DeviceHandle) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let listener = match bind(&path) {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if UnixStream::connect(&path).await.is_ok() {
                    return Err(Error::io(format!("{} is in use", path.display()), e));
                }
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing stale {}", path.display()), e))?;
                bind(&path).map_err(|e| Error::io(format!("binding {}", path.display()), e))?
            }
            Err(e) => return Err(Error::io(format!("binding {}", path.display()), e)),
        };
        let task = tokio::spawn(accept_loop(listener, device));
        Ok(Self { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    // The socket hands out the private key: root only. Set right after bind; the directory
    // is root's, so no other user can connect in between.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, device: DeviceHandle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let device = device.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &device).await {
                        debug!(error = %e, "UAPI connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "UAPI accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve requests on one connection until the client closes it.
async fn serve(stream: UnixStream, device: &DeviceHandle) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let mut answer = String::new();
    loop {
        answer.clear();
        let Some(first) = read_line(&mut reader, &mut line).await? else {
            return Ok(());
        };
        let result = match parse_operation(&first) {
            Ok(Operation::Get) => match read_body(&mut reader, &mut line).await? {
                Body::Lines(lines) if lines.is_empty() => match device.status().await {
                    Ok(status) => {
                        format_status(&status, &mut answer);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Body::Lines(_) => Err(Error::InvalidConfig("get takes no arguments".into())),
                Body::TooLong => Err(Error::InvalidConfig("request too long".into())),
            },
            Ok(Operation::Set) => match read_body(&mut reader, &mut line).await? {
                Body::Lines(lines) => match parse_set(lines.iter().map(String::as_str)) {
                    Ok(config) => device.apply(config).await,
                    Err(e) => Err(e),
                },
                Body::TooLong => Err(Error::InvalidConfig("request too long".into())),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            debug!(error = %e, "UAPI request refused");
        }
        format_errno(&result, &mut answer);
        write.write_all(answer.as_bytes()).await?;
        if parse_operation(&first).is_err() {
            // We cannot tell where an unknown request ends: stop reading it.
            return Ok(());
        }
    }
}

enum Body {
    Lines(Vec<String>),
    TooLong,
}

/// Read `key=value` lines up to the empty line that ends a request (or end of input).
async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut String,
) -> io::Result<Body> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        match read_line(reader, line).await? {
            None => return Ok(Body::Lines(lines)),
            Some(l) if l.is_empty() => return Ok(Body::Lines(lines)),
            Some(_) if total > MAX_REQUEST => return Ok(Body::TooLong),
            Some(l) => {
                total += l.len() + 1;
                lines.push(l);
            }
        }
    }
}

/// One line without its newline; `None` at end of input. Longer lines are an error (the
/// connection is dropped: a client sending them is not `wg`).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut String,
) -> io::Result<Option<String>> {
    line.clear();
    let n = (&mut *reader).take(MAX_LINE + 1).read_line(line).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') && n as u64 > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "UAPI line too long",
        ));
    }
    Ok(Some(line.trim_end_matches('\n').to_owned()))
}
