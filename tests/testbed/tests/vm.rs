//! VM hosts of a test bed: they boot, run commands, spawn and signal processes, reach the
//! namespace hosts over the underlay (and stop when cut from them), are captured on their
//! tap, and their QEMU is gone with the bed (also on panic). Needs root and the VM image
//! (tests/vm/build-image.sh, run on demand); prints "skipped: ..." otherwise.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use weft_testbed::{require_vm, TestBed, IPPROTO_ICMP};

#[test]
fn vm_hosts_run_commands_and_share_the_underlay() {
    let name = "vm_hosts_run_commands_and_share_the_underlay";
    let Some(image) = require_vm(name) else {
        return;
    };
    let bed = TestBed::builder()
        .hosts(1)
        .vms(1)
        .build()
        .expect("bed with a VM");
    let vm = bed.vm(0);
    eprintln!("VM booted in {:?}", vm.boot_time());

    // Commands: output, exit status, arguments passed as they are, iproute2 (not busybox's).
    assert_eq!(
        vm.run_ok(&["uname", "-r"]).expect("uname").trim(),
        image.kernel_version
    );
    let out = vm
        .run(&["sh", "-c", "echo out; echo err >&2; exit 3"])
        .expect("sh");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(
        vm.run_ok(&["echo", "it's $HOME", "a  b"]).expect("echo"),
        "it's $HOME a  b\n"
    );
    assert!(vm.run_ok(&["false"]).is_err());
    let ip = vm
        .run_ok(&["ip", "-br", "addr", "show", "eth0"])
        .expect("ip -br");
    assert!(ip.contains(&vm.public_ip().to_string()), "{ip}");
    // The build directory is there, at the same path.
    let exe = std::env::current_exe().expect("exe");
    let test = vm
        .run(&["test", "-x", exe.to_str().expect("utf-8")])
        .expect("test -x");
    assert!(
        test.status.success(),
        "{} not visible in the VM",
        exe.display()
    );
    // Files in the exchange directory are seen on both sides.
    std::fs::write(vm.xfer().join("hello"), "from the host").expect("write");
    assert_eq!(
        vm.run_ok(&["cat", "/xfer/hello"]).expect("cat"),
        "from the host"
    );

    // Background processes: output as they go, a signal, an exit status, a kill.
    let p = vm
        .spawn(&[
            "sh",
            "-c",
            "echo started; trap 'echo bye; exit 7' TERM; while :; do sleep 0.1; done",
        ])
        .expect("spawn");
    assert!(p
        .wait_for_output("started", Duration::from_secs(20))
        .expect("output"));
    assert!(p.is_running());
    p.signal("TERM").expect("TERM");
    let status = p.wait_timeout(Duration::from_secs(20)).expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(7), "{:?}", p.output());
    assert!(p.output().expect("output").stdout.contains("bye"));
    let sleeper = vm.spawn(&["sleep", "600"]).expect("spawn sleep");
    sleeper.kill().expect("kill");
    assert!(!sleeper.is_running());
    let left = vm
        .run_ok(&["sh", "-c", "pgrep -x sleep || true"])
        .expect("pgrep");
    assert!(left.trim().is_empty(), "sleep still runs in the VM: {left}");

    // The underlay: the VM and the namespace host reach each other, captured on the tap;
    // cut on the bridge, they do not.
    let host = bed.host(0);
    let cap = vm.capture("icmp").expect("capture");
    assert!(
        vm.ping(host.public_ip().into(), 2),
        "VM cannot ping the host"
    );
    assert!(
        host.ping(vm.public_ip().into(), 2),
        "host cannot ping the VM"
    );
    let packets = cap.finish().expect("finish");
    assert!(
        packets
            .iter()
            .any(|p| p.protocol() == Some(IPPROTO_ICMP) && p.src() == Some(vm.public_ip().into())),
        "no ICMP from the VM on its tap: {} packets",
        packets.len()
    );
    bed.cut_underlay(vm.public_ip(), host.public_ip())
        .expect("cut");
    assert!(
        !vm.ping(host.public_ip().into(), 2),
        "cut, yet the VM reaches the host"
    );
    bed.restore_underlay(vm.public_ip(), host.public_ip())
        .expect("restore");
    assert!(vm.ping(host.public_ip().into(), 3), "restored, yet no ping");

    // QEMU is gone with the bed, also when the test panics.
    assert!(vm.is_running());
    let underlay = bed.underlay_ns().to_string();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _bed = bed;
        panic!("test panics");
    }));
    assert!(result.is_err());
    assert!(
        !weft_testbed::netns_exists(&underlay),
        "{underlay} left behind"
    );
    let qemu = std::process::Command::new("pgrep")
        .args(["-f", "weft_name=vm0 weft_addr=198.18.2.10/16 weft_share="])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&qemu.stdout);
    // Other tests may run VMs too; none of them may be ours (our process's children).
    for pid in pids.split_whitespace() {
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = ppid.rsplit(") ").next().and_then(|r| r.split(' ').nth(1));
        assert_ne!(
            parent,
            Some(std::process::id().to_string().as_str()),
            "QEMU {pid} still runs after the bed dropped"
        );
    }
}
