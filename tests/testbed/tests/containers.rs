//! Container namespaces of a test bed: made, usable, removed with the bed (also on panic).
//! Needs root (network namespaces); prints "skipped: ..." otherwise.

use std::panic::{catch_unwind, AssertUnwindSafe};

use weft_testbed::{netns_exists, require_root, TestBed};

#[test]
fn containers_run_commands_and_are_removed_with_the_bed() {
    if !require_root("containers_run_commands_and_are_removed_with_the_bed") {
        return;
    }
    let bed = TestBed::new(1).expect("test bed");
    let a = bed.container().expect("container a");
    let b = bed.container().expect("container b");
    assert_ne!(a, b);
    assert!(a.starts_with(bed.prefix()) && netns_exists(&a) && netns_exists(&b));
    let lo = bed
        .run_ok_in(&a, &["ip", "-o", "link", "show", "lo"])
        .expect("ip link in container");
    assert!(lo.contains("UP"), "loopback not up: {lo}");
    assert!(bed.run_ok_in(&a, &["false"]).is_err(), "exit 1 is an error");
    let sleeper = bed.spawn_in(&b, &["sleep", "600"]).expect("spawn");
    assert!(sleeper.is_running());

    bed.remove_container(&a);
    assert!(!netns_exists(&a), "{a} still there after remove_container");

    // A panic while the bed is alive still removes the containers and kills what runs there.
    let name = b.clone();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _bed = bed;
        let _sleeper = sleeper;
        panic!("test panics");
    }));
    assert!(result.is_err());
    assert!(!netns_exists(&name), "{name} left behind after a panic");
}
