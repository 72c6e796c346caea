//! Named network namespaces as `ip netns` makes them (a bind mount of a namespace file under
//! /run/netns), and running code inside one on a thread of its own.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named network namespace `name` (refused if the name is taken).
pub fn create(name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    let target = path(name);
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    // A thread of its own enters a new namespace and pins it with a bind mount; the thread
    // then ends, so no other thread of ours ever leaves its namespace.
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("bind-mounting the namespace on {}", target.display()))
            })
            .join()
            .map_err(|_| anyhow!("namespace thread panicked"))?
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&target);
        return Err(e.context(format!("creating network namespace {name}")));
    }
    Ok(target)
}

/// Removes the named namespace `name`; it disappears once nothing runs in it. Not an error
/// if it does not exist.
pub fn delete(name: &str) {
    let target = path(name);
    let _ = umount2(&target, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&target);
}

/// Runs `f` on a new thread inside the network namespace at `ns` and returns its result.
/// Sockets and processes made by `f` live in that namespace.
pub fn run_in<T: Send>(
    ns: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let file = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {}", ns.display()))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in {} panicked", ns.display()))?
    })
}

/// Like [`run_in`] for async code: `f` runs on a current-thread runtime on that thread.
pub fn block_in<T: Send, Fut: std::future::Future<Output = anyhow::Result<T>>>(
    ns: &Path,
    f: impl FnOnce() -> Fut + Send,
) -> anyhow::Result<T> {
    run_in(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?
            .block_on(f())
    })
}
