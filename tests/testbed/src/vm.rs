//! Test hosts as small QEMU virtual machines, beside the namespace hosts on the same underlay:
//! a kernel of their own (Debian's 6.1, with WireGuard), so a weft node in one runs the
//! kernel WireGuard backend.
//!
//! - The image (a vmlinux booted via PVH and an initramfs with busybox, `ip`, `nft`, `wg` and
//!   the modules) is built once per machine by tests/vm/build-image.sh, cached in
//!   /var/cache/weft-test-vm; [`vm_image`] finds it or runs the script.
//! - QEMU runs with TCG (no KVM needed), `-cpu qemu64` (`WEFT_VM_CPU` overrides it: the guest's
//!   plain-C crypto is cheaper to emulate than vector code), one vCPU, [`VM_MEMORY_MB`] of memory,
//!   inside the bed's underlay namespace: the VM's virtio-net is the tap `vm<j>` there, a
//!   port of `br0`, so VM j (198.18.2.(10+j)/16) and the namespace hosts are peers on one
//!   underlay. Nothing is created in the root namespace.
//! - Two 9p shares: the build directory (read-only, at the same path as here, so the VM runs
//!   the test-built binaries without a new image) and a per-VM exchange directory (`/xfer` in
//!   the VM) where commands' scripts and output go.
//! - Commands go over a virtio-serial port to a small agent in the VM's init (tests/vm/init):
//!   one line per command, its script and output as files in the exchange directory.
//!
//! QEMU is killed when the [`Vm`] (or its [`crate::TestBed`]) drops, also on panic; a test
//! process killed outright leaves it in the underlay namespace, which the next bed's
//! [`crate::sweep_stale`] kills and removes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::capture::Capture;
use crate::cmd;
use crate::error::{Error, Result};
use crate::proc::{Proc, ProcOutput};
use crate::shared::Shared;

/// Set this to `1` to make [`require_vm`] panic instead of skipping (CI sets it once it has
/// built the image).
pub const REQUIRE_VM_ENV: &str = "WEFT_REQUIRE_VM";

/// Where the image is cached (overrides /var/cache/weft-test-vm).
pub const VM_CACHE_ENV: &str = "WEFT_VM_CACHE";

/// Guest memory. 128 MB boots; a weft node with pods and a capture is happier with more.
pub const VM_MEMORY_MB: u32 = 256;

/// How long a VM may take from QEMU's start to its agent's "ready" (about 5 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long [`Vm::run`] waits for a command by default.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// PATH inside the VM: the real `ip` (iproute2) before busybox's.
const GUEST_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The kernel and initramfs the VMs boot.
#[derive(Debug, Clone)]
pub struct VmImage {
    /// The cache directory.
    pub dir: PathBuf,
    /// The uncompressed kernel (ELF, PVH entry).
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The kernel release (`uname -r` in the VM), from the image's stamp.
    pub kernel_version: String,
}

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm/build-image.sh")
}

/// Finds the image, building it first if needed (tests/vm/build-image.sh: cached, locked,
/// a few seconds to a minute; it downloads the kernel package from deb.debian.org once).
/// The error says why there is none.
pub fn vm_image() -> std::result::Result<VmImage, String> {
    static IMAGE: Mutex<Option<std::result::Result<VmImage, String>>> = Mutex::new(None);
    let mut cached = IMAGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = cached.as_ref() {
        return found.clone();
    }
    let found = find_or_build_image();
    *cached = Some(found.clone());
    found
}

fn find_or_build_image() -> std::result::Result<VmImage, String> {
    if cmd::output(&["qemu-system-x86_64", "--version"]).is_err() {
        return Err("needs qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
    }
    let script = build_script();
    let mut command = std::process::Command::new(&script);
    command.stdin(std::process::Stdio::null());
    if let Ok(dir) = std::env::var(VM_CACHE_ENV) {
        command.env(VM_CACHE_ENV, dir);
    }
    let out = command
        .output()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    let stamp = std::fs::read_to_string(dir.join("stamp"))
        .map_err(|e| format!("no stamp in {}: {e}", dir.display()))?;
    let kernel_version = stamp
        .lines()
        .find_map(|l| l.strip_prefix("kernel "))
        .unwrap_or_default()
        .to_string();
    Ok(VmImage {
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
        dir,
        kernel_version,
    })
}

/// The image if this process can boot VMs (root, QEMU, an image that exists or can be
/// built). Otherwise prints `skipped: <test_name>: <why>` and returns `None`; with
/// `WEFT_REQUIRE_VM=1` (or `WEFT_REQUIRE_NETNS=1` when the reason is missing root) it panics
/// instead.
pub fn require_vm(test_name: &str) -> Option<VmImage> {
    if !crate::require_root(test_name) {
        return None;
    }
    match vm_image() {
        Ok(image) => Some(image),
        Err(why) => {
            if std::env::var(REQUIRE_VM_ENV).is_ok_and(|v| v == "1") {
                panic!("{test_name}: no VM image: {why}, but {REQUIRE_VM_ENV}=1");
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test_name}: no VM image: {why}"
            );
            None
        }
    }
}

/// Single-quotes `arg` for sh.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// A script that runs `args` in the VM. The program is looked up on PATH first: busybox's
/// shell would otherwise run its own applet of that name (its `ip`, not iproute2's).
fn exec_script(args: &[&str]) -> String {
    let program = quote(args[0]);
    let rest: Vec<String> = args[1..].iter().map(|a| quote(a)).collect();
    format!(
        "export PATH={GUEST_PATH}\nexec 3>&-\np=$(which {program}) || p={program}\nexec \"$p\" {}\n",
        rest.join(" ")
    )
}

#[derive(Debug, Default)]
struct AgentState {
    ready: bool,
    done: HashMap<u64, i32>,
    /// Why the agent can no longer answer (the VM is gone).
    closed: Option<String>,
}

/// The host end of the VM's command agent.
#[derive(Debug)]
struct Agent {
    writer: Mutex<Option<UnixStream>>,
    state: Mutex<AgentState>,
    changed: Condvar,
    next: AtomicU64,
    /// The exchange directory, as the host sees it (`/xfer` in the VM).
    xfer: PathBuf,
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads "ready" and "ID STATUS" lines until the VM goes away.
    fn read_loop(self: Arc<Self>, stream: UnixStream) {
        let mut lines = BufReader::new(stream).lines();
        let why = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let mut state = self.lock();
                    if line == "ready" {
                        state.ready = true;
                    } else if let Some((id, status)) = line.split_once(' ') {
                        if let (Ok(id), Ok(status)) = (id.parse(), status.parse()) {
                            state.done.insert(id, status);
                        }
                    }
                    self.changed.notify_all();
                }
                Some(Err(e)) => break format!("reading from the VM's agent: {e}"),
                None => break "the VM's agent closed its port (the VM is gone)".to_string(),
            }
        };
        self.lock().closed = Some(why);
        self.changed.notify_all();
    }

    fn wait_ready(&self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.ready {
                return Ok(());
            }
            if let Some(why) = &state.closed {
                return Err(why.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no \"ready\" from the VM's agent within {timeout:?}"
                ));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs `script` with sh in the VM; its status, stdout and stderr.
    fn run_script(&self, script: &str, timeout: Duration) -> Result<Output> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.xfer.join("cmd");
        let path = |ext: &str| dir.join(format!("{id}.{ext}"));
        std::fs::write(path("sh"), script)
            .map_err(|e| Error::io(format!("writing {}", path("sh").display()), e))?;
        {
            let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let stream = writer
                .as_mut()
                .ok_or_else(|| Error::Invalid("the VM's agent is not connected".into()))?;
            stream
                .write_all(format!("{id}\n").as_bytes())
                .map_err(|e| Error::io("writing to the VM's agent", e))?;
        }
        let deadline = Instant::now() + timeout;
        let status = {
            let mut state = self.lock();
            loop {
                if let Some(status) = state.done.remove(&id) {
                    break status;
                }
                if let Some(why) = &state.closed {
                    return Err(Error::Invalid(why.clone()));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(format!(
                        "command in the VM did not finish within {timeout:?}: {}",
                        script.lines().last().unwrap_or_default()
                    )));
                }
                state = self
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let read = |ext: &str| std::fs::read(path(ext)).unwrap_or_default();
        let out = Output {
            status: ExitStatus::from_raw((status & 0xff) << 8),
            stdout: read("out"),
            stderr: read("err"),
        };
        for ext in ["sh", "out", "err"] {
            let _ = std::fs::remove_file(path(ext));
        }
        Ok(out)
    }
}

/// A test host that is a virtual machine; see the module docs. Borrow it from the
/// [`crate::TestBed`] ([`crate::TestBed::vm`]).
#[derive(Debug)]
pub struct Vm {
    pub(crate) name: String,
    pub(crate) index: usize,
    pub(crate) ip: Ipv4Addr,
    pub(crate) tap: String,
    pub(crate) underlay_ns: String,
    pub(crate) share: PathBuf,
    agent: Arc<Agent>,
    qemu: Proc,
    console: PathBuf,
    shared: Arc<Shared>,
    booted_in: Duration,
}

/// How a bed starts its VMs.
#[derive(Debug, Clone)]
pub(crate) struct VmPlan {
    pub(crate) image: VmImage,
    pub(crate) share: PathBuf,
}

/// A VM whose QEMU runs but whose agent has not said "ready" yet.
pub(crate) struct Booting {
    vm: Vm,
    listener: UnixListener,
    started: Instant,
}

impl Vm {
    /// Starts QEMU for VM `index` of a bed (tap `vm<index>` on `br0` in `underlay_ns`).
    pub(crate) fn start(
        shared: &Arc<Shared>,
        underlay_ns: &str,
        prefix: &str,
        index: usize,
        plan: &VmPlan,
    ) -> Result<Booting> {
        // index < MAX_HOSTS = 200: fits an octet.
        let octet = index as u8;
        let ip = Ipv4Addr::new(198, 18, 2, 10 + octet);
        let tap = format!("vm{index}");
        let name = format!("{prefix}v{index}");
        let ns = underlay_ns;
        cmd::ok(&["ip", "-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        cmd::ok(&["ip", "-n", ns, "link", "set", &tap, "master", "br0"])?;
        cmd::ok(&["ip", "-n", ns, "link", "set", &tap, "up"])?;

        let xfer = shared.path(&format!("vm{index}"), "xfer");
        std::fs::create_dir_all(xfer.join("cmd"))
            .and_then(|()| std::fs::create_dir_all(xfer.join("proc")))
            .map_err(|e| Error::io(format!("creating {}", xfer.display()), e))?;
        let socket = shared.path(&format!("vm{index}"), "sock");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the agent socket non-blocking", e))?;
        let console = shared.path(&format!("vm{index}"), "console");

        let share = plan.share.to_string_lossy().into_owned();
        // no_timer_check: on a busy machine the emulated timer can miss the kernel's IO-APIC
        // timer check, which then panics ("IO-APIC + timer doesn't work!").
        let append = format!(
            "console=ttyS0 panic=-1 quiet no_timer_check weft_name=vm{index} weft_addr={ip}/16 weft_share={share}"
        );
        let fsdev = |id: &str, path: &Path, ro: bool| {
            format!(
                "local,id={id},path={},security_model=none{}",
                path.display(),
                if ro { ",readonly=on" } else { "" }
            )
        };
        let args: Vec<String> = vec![
            "qemu-system-x86_64".into(),
            "-M".into(),
            "pc".into(),
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            std::env::var("WEFT_VM_CPU").unwrap_or_else(|_| "qemu64".into()),
            "-m".into(),
            VM_MEMORY_MB.to_string(),
            "-smp".into(),
            "1".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            plan.image.kernel.to_string_lossy().into_owned(),
            "-initrd".into(),
            plan.image.initramfs.to_string_lossy().into_owned(),
            "-append".into(),
            append,
            "-serial".into(),
            format!("file:{}", console.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=n0,mac=52:54:00:00:02:{:02x}",
                10 + octet
            ),
            "-fsdev".into(),
            fsdev("share", &plan.share, true),
            "-device".into(),
            "virtio-9p-pci,fsdev=share,mount_tag=share".into(),
            "-fsdev".into(),
            fsdev("xfer", &xfer, false),
            "-device".into(),
            "virtio-9p-pci,fsdev=xfer,mount_tag=xfer".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={}", socket.display()),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-device".into(),
            "virtserialport,chardev=agent,name=weft.agent".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let qemu = Proc::spawn(shared, ns, &args)?;
        let agent = Arc::new(Agent {
            writer: Mutex::new(None),
            state: Mutex::new(AgentState::default()),
            changed: Condvar::new(),
            next: AtomicU64::new(0),
            xfer,
        });
        Ok(Booting {
            vm: Vm {
                name,
                index,
                ip,
                tap,
                underlay_ns: ns.to_string(),
                share: plan.share.clone(),
                agent,
                qemu,
                console,
                shared: Arc::clone(shared),
                booted_in: Duration::ZERO,
            },
            listener,
            started,
        })
    }

    /// The VM's console (kernel messages, init's), for failure messages.
    pub fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A name for messages (`wt<pid>x<n>v<j>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Position among the bed's VMs (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The VM's underlay address (198.18.2.(10+j)), which other hosts reach it at.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Same as [`Vm::public_ip`]: VMs are never behind NAT.
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The underlay interface inside the VM.
    pub fn underlay_if(&self) -> &str {
        "eth0"
    }

    /// The VM's tap device, a port of `br0` in the underlay namespace.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// The build directory shared into the VM, at the same path.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// The exchange directory (`/xfer` in the VM) as this machine sees it: files written
    /// there are visible on both sides.
    pub fn xfer(&self) -> &Path {
        &self.agent.xfer
    }

    /// From QEMU's start to the agent's "ready".
    pub fn boot_time(&self) -> Duration {
        self.booted_in
    }

    /// Runs a command in the VM and returns its output, whatever the exit status (an error
    /// if the VM is gone or it takes longer than [`RUN_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_timeout(args, RUN_TIMEOUT)
    }

    /// [`Vm::run`] with another time limit.
    pub fn run_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        if args.is_empty() {
            return Err(Error::Invalid("empty command".into()));
        }
        self.agent.run_script(&exec_script(args), timeout)
    }

    /// Runs a command; an error (with stderr) unless it exits 0. Returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        let mut full = vec!["vm", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::check(&full, out)
    }

    /// Runs `sh -c script` in the VM (busybox's sh); like [`Vm::run_ok`].
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run_ok(&["sh", "-c", script])
    }

    /// Starts a background process in the VM, in its own session. Its stdout and stderr go to
    /// files in the exchange directory. It is killed (its process group) when the [`VmProc`]
    /// drops, and with the VM.
    pub fn spawn(&self, args: &[&str]) -> Result<VmProc> {
        if args.is_empty() {
            return Err(Error::Invalid("empty command".into()));
        }
        let id = self.agent.next.fetch_add(1, Ordering::Relaxed);
        let guest = |ext: &str| format!("/xfer/proc/{id}.{ext}");
        let host = |ext: &str| self.agent.xfer.join(format!("proc/{id}.{ext}"));
        let program = quote(args[0]);
        let rest: Vec<String> = args[1..].iter().map(|a| quote(a)).collect();
        // The session leader (a shell) runs the command in the background, writes "PGID PID",
        // waits for it and writes its status (128+N after signal N) when it ends.
        let inner = format!(
            "\"$@\" </dev/null >{out} 2>{err} & echo \"$$ $!\" >{pid}.tmp && mv {pid}.tmp {pid}; \
             wait $!; echo $? >{rc}.tmp; mv {rc}.tmp {rc}",
            out = guest("out"),
            err = guest("err"),
            pid = guest("pid"),
            rc = guest("rc"),
        );
        let script = format!(
            "export PATH={GUEST_PATH}\nexec 3>&-\np=$(which {program}) || p={program}\n\
             setsid sh -c {} sh \"$p\" {} </dev/null >/dev/null 2>&1 &\n\
             i=0; while [ ! -e {pid} ] && [ $i -lt 500 ]; do usleep 10000; i=$((i+1)); done\n\
             [ -e {pid} ]\n",
            quote(&inner),
            rest.join(" "),
            pid = guest("pid"),
        );
        let out = self.agent.run_script(&script, RUN_TIMEOUT)?;
        let command = args.join(" ");
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("vm {} spawn {command}", self.name),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let ids = std::fs::read_to_string(host("pid"))
            .map_err(|e| Error::io(format!("reading {}", host("pid").display()), e))?;
        let mut numbers = ids.split_whitespace().map(str::parse::<u32>);
        let (Some(Ok(pgid)), Some(Ok(pid))) = (numbers.next(), numbers.next()) else {
            return Err(Error::Invalid(format!(
                "bad pid file for {command}: {ids:?}"
            )));
        };
        Ok(VmProc {
            agent: Arc::clone(&self.agent),
            pid,
            pgid,
            command,
            stdout: host("out"),
            stderr: host("err"),
            rc: host("rc"),
            killed: AtomicBool::new(false),
        })
    }

    /// Sends `count` pings (0.2 s apart, 1 s wait for the last) from the VM and returns true
    /// if at least one reply arrived.
    pub fn ping(&self, dst: IpAddr, count: u32) -> bool {
        ping_replies(
            self.run(
                &ping_args(&dst.to_string(), count, None)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        ) > 0
    }

    /// Starts tcpdump on the VM's tap (in the underlay namespace): what the underlay sees of
    /// this VM.
    pub fn capture(&self, bpf_filter: &str) -> Result<Capture> {
        Capture::start(&self.shared, &self.underlay_ns, &self.tap, bpf_filter)
    }

    /// True while QEMU runs.
    pub fn is_running(&self) -> bool {
        self.qemu.is_running()
    }

    /// Kills QEMU now.
    pub fn kill(&self) -> Result<()> {
        self.qemu.kill()
    }
}

impl Booting {
    /// Waits for the agent's "ready" (after its connection to our socket).
    pub(crate) fn wait(mut self) -> Result<Vm> {
        let deadline = self.started + BOOT_TIMEOUT;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !self.vm.qemu.is_running() || Instant::now() >= deadline {
                        return Err(self.failed("QEMU did not connect to the agent socket"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::io("accepting the VM's agent connection", e)),
            }
        };
        stream
            .set_nonblocking(false)
            .map_err(|e| Error::io("agent socket", e))?;
        let reader = stream
            .try_clone()
            .map_err(|e| Error::io("cloning the agent socket", e))?;
        *self
            .vm
            .agent
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(stream);
        let agent = Arc::clone(&self.vm.agent);
        std::thread::Builder::new()
            .name(format!("vm{}-agent", self.vm.index))
            .spawn(move || agent.read_loop(reader))
            .map_err(|e| Error::io("starting the agent reader", e))?;
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(why) = self.vm.agent.wait_ready(left) {
            return Err(self.failed(&why));
        }
        self.vm.booted_in = self.started.elapsed();
        Ok(self.vm)
    }

    fn failed(&self, why: &str) -> Error {
        let qemu = self.vm.qemu.output().unwrap_or(ProcOutput {
            stdout: String::new(),
            stderr: String::new(),
        });
        let console = self.vm.console();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        Error::Timeout(format!(
            "VM {} did not boot: {why}\nqemu stderr: {}\nconsole (last lines):\n{}",
            self.vm.name,
            qemu.stderr.trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// A background process in a [`Vm`]; like [`crate::Proc`].
#[derive(Debug)]
pub struct VmProc {
    agent: Arc<Agent>,
    pid: u32,
    pgid: u32,
    command: String,
    stdout: PathBuf,
    stderr: PathBuf,
    rc: PathBuf,
    killed: AtomicBool,
}

impl VmProc {
    /// The process id inside the VM.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    fn exit_code(&self) -> Option<i32> {
        if self.killed.load(Ordering::Relaxed) {
            return Some(128 + 9);
        }
        std::fs::read_to_string(&self.rc)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// True until the process has exited (or was killed).
    pub fn is_running(&self) -> bool {
        self.exit_code().is_none()
    }

    /// Kills its process group with SIGKILL. Idempotent.
    pub fn kill(&self) -> Result<()> {
        if self.killed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let script = format!("kill -KILL -- -{} 2>/dev/null; true\n", self.pgid);
        self.agent
            .run_script(&script, Duration::from_secs(20))
            .map(drop)
    }

    /// Sends a signal by name (`"TERM"`, ...) to the process (not its group).
    pub fn signal(&self, signal: &str) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let out = self.agent.run_script(
            &format!("kill -{signal} {}\n", self.pid),
            Duration::from_secs(20),
        )?;
        cmd::check(&["vm", "kill", signal, &self.pid.to_string()], out).map(drop)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs. A process
    /// ended by signal N reports exit code 128+N, as the shell does.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code() {
                return Ok(Some(ExitStatus::from_raw((code & 0xff) << 8)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// stdout and stderr written so far.
    pub fn output(&self) -> Result<ProcOutput> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(String::new())
                    } else {
                        Err(Error::io(format!("reading {}", p.display()), e))
                    }
                })
        };
        Ok(ProcOutput {
            stdout: read(&self.stdout)?,
            stderr: read(&self.stderr)?,
        })
    }

    /// Waits up to `timeout` until stdout or stderr contains `needle`. False on timeout or
    /// if the process ended without printing it.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<bool> {
        crate::proc::wait_for_output(
            needle,
            timeout,
            Duration::from_millis(50),
            || self.is_running(),
            || self.output(),
        )
    }
}

impl Drop for VmProc {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.kill();
        }
    }
}

/// busybox ping's arguments (`-c`, `-i`, `-W`; no `-n`, it never resolves names), optionally
/// inside network namespace `netns` of the VM.
pub fn ping_args(dst: &str, count: u32, netns: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        args.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    args.extend(
        [
            "ping",
            "-q",
            "-c",
            &count.max(1).to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            dst,
        ]
        .map(String::from),
    );
    args
}

/// Replies counted in ping's summary, busybox's ("2 packets transmitted, 2 packets received")
/// or iputils' ("2 packets transmitted, 2 received"); 0 on any error.
pub fn ping_replies(out: Result<Output>) -> u32 {
    let Ok(out) = out else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .split(',')
        .find_map(|part| {
            let part = part.trim();
            part.strip_suffix(" packets received")
                .or_else(|| part.strip_suffix(" received"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_every_argument() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        let script = exec_script(&["ip", "-o", "addr", "it's $HOME"]);
        assert!(script.contains("p=$(which 'ip') || p='ip'"), "{script}");
        assert!(
            script.ends_with("exec \"$p\" '-o' 'addr' 'it'\\''s $HOME'\n"),
            "{script}"
        );
    }

    #[test]
    fn ping_summaries_of_both_pings() {
        let out = |s: &str| {
            Ok(Output {
                status: ExitStatus::from_raw(0),
                stdout: s.as_bytes().to_vec(),
                stderr: Vec::new(),
            })
        };
        assert_eq!(
            ping_replies(out(
                "3 packets transmitted, 2 packets received, 33% packet loss"
            )),
            2
        );
        assert_eq!(
            ping_replies(out(
                "3 packets transmitted, 1 received, 66% packet loss, time 402ms"
            )),
            1
        );
        assert_eq!(ping_replies(out("ping: sendto: Network unreachable")), 0);
        assert_eq!(ping_replies(Err(Error::Invalid("gone".into()))), 0);
    }
}
