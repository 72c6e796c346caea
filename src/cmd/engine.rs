//! Container engines, for `weft attach CONTAINER`: a Docker or Podman container's id, name
//! and process, from the Docker engine API (`GET /containers/NAME/json`, HTTP/1.1 over the
//! unix socket of `DOCKER_HOST` or /var/run/docker.sock; Podman's compatible service answers
//! it too) or from `podman inspect`.
//!
//! The engine's answers are untrusted input: [`parse_response`] (the HTTP response, plain or
//! chunked) and [`parse_inspect`] (the JSON, an object or Podman's array of one) are pure,
//! bounded, and property-tested and fuzzed (see the tests).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

/// The Docker socket when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Longest answer read from the engine (an inspect answer is a few KiB).
pub const MAX_RESPONSE_LEN: usize = 8 << 20;
/// Longest header block of an HTTP answer.
const MAX_HEADER_LEN: usize = 64 << 10;
/// How long the engine may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A container as its engine describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The full id (64 hex digits for Docker and Podman).
    pub id: String,
    /// The name, without Docker's leading '/'.
    pub name: String,
    /// The container's init process; `None` when it is not running.
    pub pid: Option<u32>,
    /// Its labels (`Config.Labels`), for network policy.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Why a container could not be looked up.
#[derive(Debug)]
pub enum LookupError {
    /// The engine answered: no such container.
    NotFound,
    /// No engine to ask (no socket, no `podman`).
    NoEngine,
    /// Anything else, said in words.
    Failed(String),
}

/// A name or id an engine could know: 1 to 256 of `[A-Za-z0-9_.-]`, so it goes into a URL
/// and onto a command line as it is.
pub fn is_container_ref(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && !text.starts_with(['-', '.'])
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Looks `name` up with Docker, then with Podman. The error says what each said.
pub fn lookup(name: &str) -> anyhow::Result<Option<Container>> {
    if !is_container_ref(name) {
        return Ok(None);
    }
    let mut tried = Vec::new();
    match docker_socket() {
        Ok(Some(socket)) => match docker_inspect(&socket, name) {
            Ok(c) => return Ok(Some(c)),
            Err(LookupError::NotFound) => {}
            Err(LookupError::NoEngine) => {}
            Err(LookupError::Failed(why)) => {
                tried.push(format!("Docker at {}: {why}", socket.display()))
            }
        },
        Ok(None) => {}
        Err(why) => tried.push(why),
    }
    match podman_inspect(name) {
        Ok(c) => return Ok(Some(c)),
        Err(LookupError::NotFound | LookupError::NoEngine) => {}
        Err(LookupError::Failed(why)) => tried.push(format!("podman: {why}")),
    }
    if tried.is_empty() {
        Ok(None)
    } else {
        anyhow::bail!("looking up container {name}: {}", tried.join("; "))
    }
}

/// The Docker socket to ask: `DOCKER_HOST` (`unix://PATH` only) or the default one if it
/// exists.
fn docker_socket() -> Result<Option<PathBuf>, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(Some(PathBuf::from(path))),
            None => Err(format!(
                "DOCKER_HOST={host}: only unix:// sockets are supported"
            )),
        },
        _ => {
            let path = PathBuf::from(DEFAULT_DOCKER_SOCKET);
            Ok(path.exists().then_some(path))
        }
    }
}

/// `GET /containers/NAME/json` on the Docker engine API at `socket`.
pub fn docker_inspect(socket: &Path, name: &str) -> Result<Container, LookupError> {
    if !is_container_ref(name) {
        return Err(LookupError::NotFound);
    }
    let (status, body) = docker_call(socket, "GET", &format!("/containers/{name}/json"), None)?;
    match status {
        200 => parse_inspect(&body).map_err(LookupError::Failed),
        404 => Err(LookupError::NotFound),
        other => Err(LookupError::Failed(format!(
            "HTTP {other}: {}",
            error_message(&body)
        ))),
    }
}

/// One request to the Docker engine API at `socket` (`path` already URL-safe), with a JSON
/// body if given: the answer's status and body, read up to [`MAX_RESPONSE_LEN`], within
/// the engine's time limit. Blocking.
pub fn docker_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), LookupError> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LookupError::NoEngine),
        Err(e) => return Err(LookupError::Failed(format!("connecting: {e}"))),
    };
    let failed = |what: &str, e: std::io::Error| LookupError::Failed(format!("{what}: {e}"));
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| failed("setting timeouts", e))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: weft\r\nAccept: application/json\r\nConnection: close\r\n"
    )
    .into_bytes();
    if let Some(body) = body {
        request.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body.unwrap_or_default());
    stream
        .write_all(&request)
        .map_err(|e| failed("sending the request", e))?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_LEN as u64 + MAX_HEADER_LEN as u64)
        .read_to_end(&mut answer)
        .map_err(|e| failed("reading the answer", e))?;
    parse_response(&answer).map_err(LookupError::Failed)
}

/// The message of an engine's error answer, for logs.
pub fn engine_error(status: u16, body: &[u8]) -> String {
    format!("HTTP {status}: {}", error_message(body))
}

/// `podman inspect --type container NAME`.
fn podman_inspect(name: &str) -> Result<Container, LookupError> {
    let out = match Command::new("podman")
        .args(["inspect", "--type", "container", name])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LookupError::NoEngine),
        Err(e) => return Err(LookupError::Failed(format!("running podman: {e}"))),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("no such") || stderr.contains("not found") {
            return Err(LookupError::NotFound);
        }
        return Err(LookupError::Failed(
            stderr.trim().chars().take(300).collect(),
        ));
    }
    if out.stdout.len() > MAX_RESPONSE_LEN {
        return Err(LookupError::Failed("answer too long".into()));
    }
    parse_inspect(&out.stdout).map_err(LookupError::Failed)
}

/// The message of an engine's error answer (`{"message":"..."}`), or the start of the body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    let text = match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    text.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

/// An HTTP/1.x response: its status and its body (de-chunked). The body is what follows the
/// headers, cut to `Content-Length` if there is one, or decoded if chunked; anything short
/// or malformed is an error.
pub fn parse_response(bytes: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = find(bytes, b"\r\n\r\n")
        .filter(|&e| e <= MAX_HEADER_LEN)
        .ok_or("the answer has no complete HTTP header")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "the HTTP header is not text")?;
    let rest = &bytes[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {:.60}", status_line));
    }
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad HTTP status line: {:.60}", status_line))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad HTTP header line: {:.60}", line));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| format!("bad Content-Length: {:.30}", value))?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length headers".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(format!("unsupported Transfer-Encoding: {:.30}", value));
            }
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if n > MAX_RESPONSE_LEN {
            return Err("the answer is too long".into());
        }
        rest.get(..n)
            .ok_or("the answer is shorter than its Content-Length")?
            .to_vec()
    } else {
        if rest.len() > MAX_RESPONSE_LEN {
            return Err("the answer is too long".into());
        }
        rest.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body (chunk extensions and trailers ignored); it must end with the
/// zero-length chunk.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or("a chunk size line is not complete")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "a chunk size is not text")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        if hex.is_empty() || hex.len() > 8 {
            return Err(format!("bad chunk size {:.20}", line));
        }
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if body.len() + size > MAX_RESPONSE_LEN {
            return Err("the answer is too long".into());
        }
        let chunk = rest.get(..size).ok_or("a chunk is cut short")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("a chunk does not end with CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The engine's description of a container: Docker's object or Podman's array of one.
pub fn parse_inspect(body: &[u8]) -> Result<Container, String> {
    #[derive(Deserialize)]
    struct State {
        #[serde(rename = "Pid", default)]
        pid: i64,
        #[serde(rename = "Running", default)]
        running: bool,
    }
    #[derive(Deserialize)]
    struct Inspect {
        #[serde(rename = "Id")]
        id: String,
        #[serde(rename = "Name", default)]
        name: String,
        #[serde(rename = "State")]
        state: State,
        #[serde(rename = "Config", default)]
        config: Option<Config>,
    }
    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "Labels", default)]
        labels: Option<std::collections::BTreeMap<String, String>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Inspect),
        Many(Vec<Inspect>),
    }
    let parsed: OneOrMany = serde_json::from_slice(body)
        .map_err(|e| format!("the engine's description of the container: {e}"))?;
    let inspect = match parsed {
        OneOrMany::One(i) => i,
        OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
        OneOrMany::Many(v) => {
            return Err(format!(
                "the engine described {} containers, not one",
                v.len()
            ))
        }
    };
    if !is_container_ref(&inspect.id) {
        return Err(format!(
            "the engine gave an odd container id {:?}",
            inspect.id.chars().take(80).collect::<String>()
        ));
    }
    let name = inspect.name.strip_prefix('/').unwrap_or(&inspect.name);
    if name.len() > 256 || name.chars().any(char::is_control) {
        return Err("the engine gave an odd container name".into());
    }
    let pid = match inspect.state.pid {
        0 => None,
        p if p > 0 && p <= i64::from(i32::MAX) => Some(p as u32),
        p => return Err(format!("the engine gave an odd process id {p}")),
    };
    Ok(Container {
        id: inspect.id,
        name: name.to_string(),
        pid: pid.filter(|_| inspect.state.running),
        labels: inspect.config.and_then(|c| c.labels).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "3f4e8a1c2b9d0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

    fn docker_json(pid: i64, running: bool) -> String {
        format!(
            r#"{{"Id":"{ID}","Created":"2024-01-01T00:00:00Z","Path":"sh","State":{{"Status":"running","Running":{running},"Pid":{pid},"ExitCode":0}},"Name":"/web-1","NetworkSettings":{{"Networks":{{}}}}}}"#
        )
    }

    #[test]
    fn docker_and_podman_descriptions_parse() {
        let c = parse_inspect(docker_json(4242, true).as_bytes()).expect("docker");
        assert_eq!(
            c,
            Container {
                id: ID.into(),
                name: "web-1".into(),
                pid: Some(4242),
                labels: Default::default(),
            }
        );
        let labelled = docker_json(1, true).replace(
            r#""Path":"sh""#,
            r#""Path":"sh","Config":{"Image":"busybox","Labels":{"app":"web","tier":"front"}}"#,
        );
        let c = parse_inspect(labelled.as_bytes()).expect("docker with labels");
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.labels.len(), 2);
        let stopped = parse_inspect(docker_json(0, false).as_bytes()).expect("stopped");
        assert_eq!(stopped.pid, None);
        let podman =
            format!(r#"[{{"Id":"{ID}","Name":"web-1","State":{{"Running":true,"Pid":77}}}}]"#);
        assert_eq!(
            parse_inspect(podman.as_bytes()).expect("podman").pid,
            Some(77)
        );
        for bad in [
            "".to_string(),
            "[]".into(),
            "null".into(),
            r#"{"Id":"x"}"#.into(),
            r#"{"Id":"a/b","State":{}}"#.into(),
            r#"{"Id":"","State":{}}"#.into(),
            docker_json(-1, true),
            docker_json(1 << 40, true),
            format!("[{0},{0}]", docker_json(1, true)),
        ] {
            assert!(parse_inspect(bad.as_bytes()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn http_answers_plain_sized_and_chunked() {
        let body = docker_json(9, true);
        let sized = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(
            parse_response(sized.as_bytes()).expect("sized"),
            (200, body.clone().into_bytes())
        );
        let (a, b) = body.split_at(10);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        assert_eq!(
            parse_response(chunked.as_bytes()).expect("chunked"),
            (200, body.into_bytes())
        );
        let message = "{\"message\":\"No such container: nope\"}\n";
        let not_found = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{message}",
            message.len()
        );
        let (status, body) = parse_response(not_found.as_bytes()).expect("404");
        assert_eq!(status, 404);
        assert_eq!(error_message(&body), "No such container: nope");
        for bad in [
            "",
            "HTTP/1.1 200 OK\r\n",
            "SSH-2.0\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
        ] {
            assert!(parse_response(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn container_refs_are_url_and_argv_safe() {
        for good in ["web-1", ID, "a", "my_app.2"] {
            assert!(is_container_ref(good), "{good}");
        }
        for bad in ["", "-rm", ".x", "a/b", "a b", "a?b", "../x", "é"] {
            assert!(!is_container_ref(bad), "{bad}");
        }
    }

    /// A body split into chunks at `cuts`, as an HTTP/1.1 chunked answer.
    fn chunked(body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.push(0);
        points.push(body.len());
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            let part = &body[w[0]..w[1]];
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// What any accepted description must be.
    fn sound(c: &Container) {
        assert!(is_container_ref(&c.id));
        assert!(c.name.len() <= 256 && !c.name.starts_with('/'));
        assert!(c.pid.is_none_or(|p| p > 0 && p <= i32::MAX as u32));
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_to_what_was_sent(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let (status, got) = parse_response(&chunked(&body, &cuts)).expect("valid");
            prop_assert_eq!(status, 200);
            prop_assert_eq!(got, body);
        }

        #[test]
        fn cut_or_damaged_answers_are_refused_or_read_whole(
            pid in 0i64..100_000,
            running in any::<bool>(),
            cut in any::<usize>(),
            flip in any::<(usize, u8)>(),
        ) {
            let body = docker_json(pid, running);
            let full = chunked(body.as_bytes(), &[17, 300]);
            // Cut short anywhere: never a wrong container.
            let short = &full[..cut % full.len()];
            if let Ok((_, b)) = parse_response(short) {
                if let Ok(c) = parse_inspect(&b) {
                    prop_assert_eq!(c.id.as_str(), ID);
                }
            }
            // One byte changed: refused, or a sound container.
            let mut damaged = full.clone();
            let i = flip.0 % damaged.len();
            damaged[i] ^= flip.1.max(1);
            if let Ok((_, b)) = parse_response(&damaged) {
                if let Ok(c) = parse_inspect(&b) {
                    sound(&c);
                }
            }
        }

        #[test]
        fn descriptions_with_any_fields_are_sound_or_refused(
            id in "[ -~]{0,80}",
            name in "[ -~]{0,40}",
            pid in any::<i64>(),
            running in any::<bool>(),
            array in any::<bool>(),
        ) {
            let one = serde_json::json!({"Id": id, "Name": name, "State": {"Pid": pid, "Running": running}});
            let v = if array { serde_json::json!([one]) } else { one };
            if let Ok(c) = parse_inspect(v.to_string().as_bytes()) {
                sound(&c);
                prop_assert_eq!(c.pid.is_some(), running && pid > 0);
            }
        }
    }

    /// Fuzz target: any bytes as an engine's answer give a container or an error, never a
    /// panic (`cargo bolero test --bin weft cmd::engine::tests::fuzz_engine_answer`).
    #[test]
    fn fuzz_engine_answer() {
        bolero::check!().for_each(|bytes: &[u8]| {
            if let Ok((_, body)) = parse_response(bytes) {
                assert!(body.len() <= MAX_RESPONSE_LEN);
                if let Ok(c) = parse_inspect(&body) {
                    sound(&c);
                }
            }
            if let Ok(c) = parse_inspect(bytes) {
                sound(&c);
            }
        });
    }
}
