//! `weft demo`: a 3-node cluster in namespaces whose containers all ping each other, and
//! nothing left behind afterwards; without root, a clear refusal.

use std::process::{Command, Output};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The namespace prefix the demo announces ("... in network namespaces wd1234* ...").
fn announced_prefix(stdout: &str) -> Option<String> {
    let after = stdout.split("network namespaces ").nth(1)?;
    let prefix = after.split('*').next()?;
    prefix.starts_with("wd").then(|| prefix.to_string())
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn demo_cluster_pings_every_pair_and_cleans_up() {
    if !weft_testbed::require_root("demo_cluster_pings_every_pair_and_cleans_up") {
        return;
    }
    let links_before = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let out = Command::new(WEFT)
        .args(["demo", "--nodes", "3"])
        .output()
        .expect("run weft demo");
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = announced_prefix(&stdout).unwrap_or_else(|| panic!("no prefix in:\n{all}"));
    assert!(out.status.success(), "{all}");

    // The matrix: three rows, every off-diagonal cell an RTT.
    assert!(stdout.contains("ping matrix"), "{all}");
    // The rows: after the title and the column header, up to the blank line.
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("ping matrix"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "{all}");
    for row in &rows {
        assert_eq!(row.matches(" ms").count(), 2, "row {row:?} in:\n{all}");
        assert!(!row.contains("FAIL"), "{all}");
    }
    assert!(
        stdout.contains("all 6 container pairs pinged each other"),
        "{all}"
    );
    assert!(
        stdout.contains("node1") && stdout.contains("node3"),
        "no peers list:\n{all}"
    );

    // Nothing left: no namespace with the demo's prefix, no new link in this namespace.
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let links_after = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let after = String::from_utf8_lossy(&links_after.stdout);
    for i in 1..=3 {
        let veth = weft_mesh::attach::host_ifname(&format!("{prefix}-c{i}/eth0"));
        assert!(!after.contains(&veth), "veth {veth} left behind");
    }
    assert!(!after.contains(&prefix), "link named {prefix}* left behind");
    assert_eq!(
        String::from_utf8_lossy(&links_before.stdout)
            .lines()
            .count(),
        after.lines().count(),
        "the demo changed the root namespace's links"
    );
    assert!(
        !std::path::Path::new(&format!(
            "{}/weft-demo-{}",
            std::env::temp_dir().display(),
            prefix.trim_start_matches("wd")
        ))
        .exists(),
        "temporary directory left behind"
    );
}

#[test]
fn demo_without_root_says_it_needs_root() {
    let is_root = nix::unistd::geteuid().is_root();
    let out = if is_root {
        // Drop to nobody for the child only.
        let Ok(out) = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([WEFT, "demo"])
            .output()
        else {
            eprintln!("skipped: demo_without_root_says_it_needs_root: setpriv is not installed");
            return;
        };
        if String::from_utf8_lossy(&out.stderr).contains("Permission denied") {
            eprintln!("skipped: demo_without_root_says_it_needs_root: nobody cannot run {WEFT}");
            return;
        }
        out
    } else {
        Command::new(WEFT)
            .arg("demo")
            .output()
            .expect("run weft demo")
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("weft demo needs root (network namespaces): run it with sudo"),
        "{all}"
    );
    assert!(out.stdout.is_empty(), "{all}");
}
