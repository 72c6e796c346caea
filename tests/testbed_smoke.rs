//! The test bed itself, end to end: reachability, cuts, capture, NAT, cleanup.
//! Needs root (network namespaces); prints "skipped: ..." otherwise.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

use weft_testbed::{list_netns, netns_exists, require_root, wait_until, TestBed};

fn gone(names: &[String]) -> bool {
    let live = list_netns();
    names.iter().all(|n| !live.contains(n) && !netns_exists(n))
}

#[test]
fn every_host_reaches_every_other_and_cut_restore_work() {
    if !require_root("every_host_reaches_every_other_and_cut_restore_work") {
        return;
    }
    let bed = TestBed::new(5).expect("build test bed");
    let names = bed.namespaces().to_vec();
    assert_eq!(names.len(), 6, "5 hosts + underlay: {names:?}");
    for a in bed.hosts() {
        for b in bed.hosts() {
            if a.index() != b.index() {
                assert!(
                    a.ping(b.public_ip().into(), 1),
                    "host {} cannot ping host {}",
                    a.index(),
                    b.index()
                );
            }
        }
    }

    bed.cut(0, 1).expect("cut 0-1");
    let ip = |i: usize| IpAddr::from(bed.host(i).public_ip());
    assert!(!bed.host(0).ping(ip(1), 2), "0 -> 1 still works after cut");
    assert!(!bed.host(1).ping(ip(0), 2), "1 -> 0 still works after cut");
    assert!(bed.host(0).ping(ip(2), 1), "0 -> 2 broken by cutting 0-1");
    assert!(bed.host(1).ping(ip(2), 1), "1 -> 2 broken by cutting 0-1");
    bed.cut(0, 1).expect("cutting twice is fine");

    bed.restore(0, 1).expect("restore 0-1");
    assert!(bed.host(0).ping(ip(1), 1), "0 -> 1 not back after restore");
    assert!(bed.host(1).ping(ip(0), 1), "1 -> 0 not back after restore");
    bed.restore(0, 1).expect("restoring twice is fine");

    drop(bed);
    assert!(gone(&names), "namespaces left: {:?}", list_netns());
}

#[test]
fn capture_sees_udp_payload_from_other_host() {
    if !require_root("capture_sees_udp_payload_from_other_host") {
        return;
    }
    let bed = TestBed::new(2).expect("build test bed");
    let cap = bed.capture(1, "udp port 40001").expect("start capture");
    let payload = "weft-testbed-udp-probe-7f3a";
    let dst = bed.host(1).public_ip().to_string();
    bed.host(0)
        .sh(&format!("printf '{payload}' | nc -u -w1 -q0 {dst} 40001"))
        .expect("send with nc");
    let packets = cap.finish().expect("finish capture");
    let hit = packets
        .iter()
        .find(|p| p.is_udp(40001) && p.udp_payload() == Some(payload.as_bytes()))
        .unwrap_or_else(|| panic!("payload not captured; got {packets:?}"));
    assert_eq!(hit.src(), Some(bed.host(0).public_ip().into()));
    assert_eq!(hit.dst(), Some(bed.host(1).public_ip().into()));
    assert!(hit.contains(payload.as_bytes()));
    // The filter really filtered: nothing else got in.
    assert!(packets.iter().all(|p| p.is_udp(40001)), "{packets:?}");
}

#[test]
fn spawned_process_output_and_kill() {
    if !require_root("spawned_process_output_and_kill") {
        return;
    }
    let bed = TestBed::new(2).expect("build test bed");
    let listener = bed
        .host(1)
        .spawn(&["nc", "-u", "-l", "-k", "-n", "-v", "-p", "40002"])
        .expect("spawn nc");
    // nc prints nothing on start; wait until the socket is bound instead.
    let bound = wait_until(Duration::from_secs(5), || {
        bed.host(1)
            .run_ok(&["ss", "-uln", "sport = :40002"])
            .is_ok_and(|out| out.contains(":40002"))
    });
    assert!(bound, "nc did not bind");
    let dst = bed.host(1).public_ip().to_string();
    bed.host(0)
        .sh(&format!("printf 'spawn-probe' | nc -u -w1 -q0 {dst} 40002"))
        .expect("send");
    assert!(
        listener
            .wait_for_output("spawn-probe", Duration::from_secs(5))
            .expect("read output"),
        "listener output: {:?}",
        listener.output()
    );
    assert!(listener.is_running());
    listener.kill().expect("kill");
    assert!(!listener.is_running());
    assert!(listener
        .wait_timeout(Duration::from_secs(1))
        .expect("wait")
        .is_some());
}

#[test]
fn nat_host_reaches_public_host_and_cannot_be_reached_unsolicited() {
    if !require_root("nat_host_reaches_public_host_and_cannot_be_reached_unsolicited") {
        return;
    }
    let bed = TestBed::builder()
        .hosts(3)
        .nat(&[1])
        .build()
        .expect("build test bed");
    let natted = bed.host(1);
    let public = bed.host(0);
    assert!(natted.behind_nat() && !public.behind_nat());
    assert_ne!(natted.public_ip(), natted.underlay_ip());
    assert_eq!(public.public_ip(), public.underlay_ip());

    // Outbound works, and the public host sees the NAT's outside address as source.
    let cap = bed.capture(0, "icmp").expect("capture on public host");
    assert!(
        natted.ping(public.public_ip().into(), 2),
        "NATed host cannot reach public host"
    );
    let packets = cap.finish().expect("finish capture");
    let sources: Vec<_> = packets.iter().filter_map(|p| p.src()).collect();
    assert!(
        sources.contains(&natted.public_ip().into()),
        "no packet from the NAT address {}; sources {sources:?}",
        natted.public_ip()
    );
    assert!(
        !sources.contains(&natted.underlay_ip().into()),
        "private address leaked: {sources:?}"
    );

    // Unsolicited inbound fails: to the NAT address and to the private address.
    assert!(
        !public.ping(natted.public_ip().into(), 2),
        "NAT answered unsolicited ping"
    );
    assert!(
        !public.ping(natted.underlay_ip().into(), 1),
        "private address reachable"
    );

    // UDP: the public host cannot initiate, but can answer through the NAT mapping.
    let cap = bed
        .capture(1, "udp port 40003")
        .expect("capture on NATed host");
    public
        .sh(&format!(
            "printf 'unsolicited' | nc -u -w1 -q0 -p 40004 {} 40003",
            natted.public_ip()
        ))
        .expect("send unsolicited");
    let packets = cap.finish().expect("finish capture");
    assert!(
        packets.iter().all(|p| !p.contains(b"unsolicited")),
        "unsolicited UDP reached the NATed host: {packets:?}"
    );

    let cap = bed.capture(1, "udp").expect("capture on NATed host");
    let server = public
        .spawn(&[
            "sh",
            "-c",
            "printf 'reply-through-nat' | nc -u -l -n -w2 -p 40005",
        ])
        .expect("spawn udp server");
    assert!(wait_until(Duration::from_secs(5), || {
        public
            .run_ok(&["ss", "-uln", "sport = :40005"])
            .is_ok_and(|out| out.contains(":40005"))
    }));
    natted
        .sh(&format!(
            "printf 'hello' | nc -u -w2 -p 40006 {} 40005",
            public.public_ip()
        ))
        .expect("NATed host sends first");
    assert!(
        cap.wait_for(Duration::from_secs(5), |p| p.contains(b"reply-through-nat"))
            .expect("poll capture"),
        "the reply did not come back through the NAT; server: {:?}",
        server.output()
    );
    drop(server);
    let packets = cap.finish().expect("finish capture");
    let reply = packets
        .iter()
        .find(|p| p.contains(b"reply-through-nat"))
        .expect("reply in final capture");
    assert_eq!(reply.dst(), Some(natted.underlay_ip().into()));
}

#[test]
fn ipv6_underlay_and_nat66() {
    if !require_root("ipv6_underlay_and_nat66") {
        return;
    }
    let bed = TestBed::builder()
        .hosts(3)
        .ipv6(true)
        .nat(&[2])
        .build()
        .expect("build test bed");
    let v6 = |i: usize| bed.host(i).public_ip6().expect("ipv6 address");
    assert!(bed.host(0).ping(v6(1).into(), 1), "0 -> 1 over IPv6");
    assert!(bed.host(2).ping(v6(0).into(), 1), "NATed 2 -> 0 over IPv6");
    assert!(
        !bed.host(0).ping(v6(2).into(), 1),
        "unsolicited IPv6 into NAT"
    );
    bed.cut(0, 1).expect("cut");
    assert!(!bed.host(0).ping(v6(1).into(), 1), "IPv6 cut");
    assert!(
        !bed.host(0).ping(bed.host(1).public_ip().into(), 1),
        "IPv4 cut"
    );
    bed.restore(0, 1).expect("restore");
    assert!(bed.host(0).ping(v6(1).into(), 1), "IPv6 restored");
}

#[test]
fn beds_in_parallel_threads_do_not_collide() {
    if !require_root("beds_in_parallel_threads_do_not_collide") {
        return;
    }
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let bed = TestBed::new(2).expect("build test bed");
                    let ok = bed.host(0).ping(bed.host(1).public_ip().into(), 1);
                    (bed.prefix().to_string(), ok)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut prefixes: Vec<_> = results.iter().map(|(p, _)| p.clone()).collect();
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), 3, "prefixes collide: {results:?}");
    assert!(results.iter().all(|(_, ok)| *ok), "{results:?}");
}

#[test]
fn panic_inside_a_test_still_cleans_up() {
    if !require_root("panic_inside_a_test_still_cleans_up") {
        return;
    }
    let names = Mutex::new((Vec::new(), Vec::new()));
    let result = catch_unwind(AssertUnwindSafe(|| {
        let bed = TestBed::builder()
            .hosts(2)
            .nat(&[1])
            .build()
            .expect("build test bed");
        let _sleeper = bed.host(0).spawn(&["sleep", "600"]).expect("spawn");
        // Also a process the bed did not start itself (backgrounded by a shell).
        bed.host(1)
            .sh("sleep 600 >/dev/null 2>&1 &")
            .expect("background sleep");
        let mut pids = Vec::new();
        for ns in bed.namespaces() {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .expect("ip netns pids");
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from),
            );
        }
        assert_eq!(pids.len(), 2, "two sleeps running: {pids:?}");
        *names.lock().expect("lock") = (bed.namespaces().to_vec(), pids);
        panic!("deliberate panic with a live test bed");
    }));
    assert!(result.is_err());
    let (names, pids) = names.into_inner().expect("lock");
    for pid in &pids {
        // Gone, or at most a zombie waiting for its reaper.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
        assert!(
            stat.is_empty() || state == Some('Z'),
            "process {pid} survived the test bed: {stat}"
        );
    }
    assert_eq!(names.len(), 4, "underlay, 2 hosts, 1 router: {names:?}");
    assert!(
        gone(&names),
        "namespaces left after panic: {:?}",
        list_netns()
    );
}

#[test]
fn stale_namespaces_of_dead_processes_are_swept() {
    if !require_root("stale_namespaces_of_dead_processes_are_swept") {
        return;
    }
    // A pid that is certainly dead: a child we started and reaped.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    child.wait().expect("wait");
    let dead = child.id();
    let stale = format!("wt{dead}x0h3");
    // One of our own pid, with a bed number this process never reaches: must survive.
    let live = format!("wt{}x999999u", std::process::id());
    for ns in [&stale, &live] {
        let status = std::process::Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "creating {ns}");
    }
    let bed = TestBed::new(1).expect("build test bed");
    let stale_gone = !netns_exists(&stale);
    let live_kept = netns_exists(&live);
    for ns in [&live, &stale] {
        // `output`, not `status`: the stale one is normally gone already, keep its error quiet.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .output();
    }
    drop(bed);
    assert!(stale_gone, "stale namespace {stale} not swept");
    assert!(live_kept, "namespace {live} of a live process was swept");
}

#[test]
fn partition_heal_and_loss() {
    if !require_root("partition_heal_and_loss") {
        return;
    }
    let bed = TestBed::new(4).expect("build test bed");
    let ip = |i: usize| IpAddr::from(bed.host(i).public_ip());
    bed.partition(&[&[0, 1], &[2, 3]]).expect("partition");
    assert!(bed.host(0).ping(ip(1), 1), "0 -> 1 inside a group");
    assert!(bed.host(3).ping(ip(2), 1), "3 -> 2 inside a group");
    assert!(!bed.host(0).ping(ip(2), 1), "0 -> 2 across the partition");
    assert!(!bed.host(3).ping(ip(1), 1), "3 -> 1 across the partition");
    bed.heal().expect("heal");
    assert!(bed.host(0).ping(ip(3), 1), "0 -> 3 after heal");
    assert!(bed.host(2).ping(ip(1), 1), "2 -> 1 after heal");

    bed.set_loss(0, 100).expect("total loss");
    assert!(!bed.host(0).ping(ip(1), 2), "ping through 100% loss");
    // 50% on the way out: of 200 echo requests, host 1 sees roughly half.
    bed.set_loss(0, 50).expect("half loss");
    let cap = bed
        .capture(1, "icmp[icmptype] = icmp-echo")
        .expect("capture");
    bed.host(0)
        .run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            "200",
            "-i",
            "0.005",
            "-W",
            "1",
            &ip(1).to_string(),
        ])
        .expect("ping burst");
    let seen = cap.finish().expect("finish").len();
    assert!(
        (40..=160).contains(&seen),
        "{seen} of 200 arrived at 50% loss"
    );
    bed.set_loss(0, 0).expect("no loss");
    bed.set_loss(0, 0).expect("no loss, twice");
    assert!(bed.host(0).ping(ip(1), 1), "ping after loss removed");
}
