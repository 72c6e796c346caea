//! Background processes inside a host's namespace.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{Error, Result};
use crate::shared::Shared;

/// The child and, once reaped, its exit status. Reaping happens only under the lock, so a
/// pid is never signalled after it could have been reused.
#[derive(Debug)]
pub(crate) struct ChildSlot {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildSlot {
    fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| Error::io("waiting for child", e))?;
        }
        Ok(self.status)
    }

    /// Kills the whole process group (the command and anything it started), then reaps.
    pub(crate) fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        let pid = self.child.id();
        let _ = cmd::signal(&format!("-{pid}"), "KILL");
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

/// Locks a slot even if a panicking thread poisoned it (cleanup must still work).
pub(crate) fn lock(slot: &Mutex<ChildSlot>) -> MutexGuard<'_, ChildSlot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Captured output of a [`Proc`] so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcOutput {
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// A background process in a test host. It runs in its own process group; dropping the
/// `Proc` (or the [`crate::TestBed`]) kills the group and reaps the process.
/// stdout and stderr go to files in the test bed's temporary directory.
#[derive(Debug)]
pub struct Proc {
    slot: Arc<Mutex<ChildSlot>>,
    pid: u32,
    command: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    // Keeps the temporary directory (and so the output files) alive.
    _shared: Arc<Shared>,
}

impl Proc {
    pub(crate) fn spawn(shared: &Arc<Shared>, netns: &str, args: &[&str]) -> Result<Proc> {
        if args.is_empty() {
            return Err(Error::Invalid("empty command".into()));
        }
        let command = cmd::render(args);
        let (stdout_path, stderr_path) = shared.output_paths(netns);
        let open = |p: &PathBuf| {
            File::create(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
        };
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(open(&stdout_path)?)
            .stderr(open(&stderr_path)?)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        // `ip netns exec` execs the command, so this is the command's pid.
        let pid = child.id();
        let slot = Arc::new(Mutex::new(ChildSlot {
            child,
            status: None,
        }));
        shared.register(Arc::downgrade(&slot));
        Ok(Proc {
            slot,
            pid,
            command,
            stdout_path,
            stderr_path,
            _shared: Arc::clone(shared),
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// True until the process has exited.
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.slot).poll(), Ok(None))
    }

    /// Kills the process group with SIGKILL and reaps the process. Idempotent.
    pub fn kill(&self) -> Result<()> {
        lock(&self.slot).kill();
        Ok(())
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, `"HUP"`, ...) to the process (not its group),
    /// e.g. to test graceful shutdown. Does nothing if it already exited.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let mut slot = lock(&self.slot);
        if slot.poll()?.is_some() {
            return Ok(());
        }
        cmd::signal(&self.pid.to_string(), signal)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = lock(&self.slot).poll()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// stdout and stderr written so far.
    pub fn output(&self) -> Result<ProcOutput> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        Ok(ProcOutput {
            stdout: read(&self.stdout_path)?,
            stderr: read(&self.stderr_path)?,
        })
    }

    /// Waits up to `timeout` until stdout or stderr contains `needle` (e.g. a "listening"
    /// line). Returns false on timeout or if the process exited without printing it.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<bool> {
        wait_for_output(
            needle,
            timeout,
            Duration::from_millis(20),
            || self.is_running(),
            || self.output(),
        )
    }

    pub(crate) fn stderr_path(&self) -> &PathBuf {
        &self.stderr_path
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        lock(&self.slot).kill();
    }
}

/// Kills every still-registered process (used when the test bed drops).
pub(crate) fn kill_all(procs: Vec<Weak<Mutex<ChildSlot>>>) {
    for slot in procs.iter().filter_map(Weak::upgrade) {
        lock(&slot).kill();
    }
}

/// Polls `output` every `poll` until stdout or stderr contains `needle` (true), or until
/// `timeout` or the process's end without it (false). Shared by namespace and VM processes.
pub(crate) fn wait_for_output(
    needle: &str,
    timeout: Duration,
    poll: Duration,
    running: impl Fn() -> bool,
    output: impl Fn() -> Result<ProcOutput>,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        // Read after checking liveness, so output written just before the end is seen.
        let exited = !running();
        let out = output()?;
        if out.stdout.contains(needle) || out.stderr.contains(needle) {
            return Ok(true);
        }
        if exited || Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(poll);
    }
}
