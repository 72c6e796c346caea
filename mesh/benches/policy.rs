//! Policy engine benchmark: parse, compile and render time, and the size of the ruleset
//! (rules, sets, set elements), for growing numbers of pods and policies; with root, also the
//! time `nft -f` takes to load it in a test namespace. Prints a table (docs/POLICY.md has
//! one).
//!
//! Run: `cargo bench -p weft-mesh --bench policy`. Under `cargo test --benches` it runs the
//! smallest size once, as a smoke test.

use std::time::{Duration, Instant};

use weft_mesh::policy::{self, Scope};

#[path = "../tests/policy_common/mod.rs"]
mod policy_common;

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Best of `n` runs of `f`.
fn best<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    let mut out = None;
    for _ in 0..n {
        let start = Instant::now();
        let v = f();
        let t = start.elapsed();
        if best.is_none_or(|b| t < b) {
            best = Some(t);
        }
        out = Some(v);
    }
    (best.unwrap_or_default(), out.expect("n > 0"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[(usize, usize)] = if full {
        &[
            (100, 10),
            (100, 100),
            (1000, 100),
            (1000, 1000),
            (10000, 100),
            (10000, 1000),
            (1000, 5000),
        ]
    } else {
        &[(100, 10)]
    };
    let bed = (full && weft_testbed::require_root("policy benchmark: nft -f timing"))
        .then(|| weft_testbed::TestBed::new(1).expect("test bed"));
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "| pods | policies | parse ms | compile ms | render ms | nft -f ms | drift check ms | rules | chains | sets | elements |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &(pods, policies) in sizes {
        let yaml = policy_common::large_yaml(policies);
        let mut cluster = policy_common::large_pods(pods);
        let runs = if full { 3 } else { 1 };
        let (parse, parsed) = best(runs, || policy::parse(&yaml, "default").expect("valid"));
        cluster.policies = parsed;
        let scope = Scope::Node("n1".into());
        let (compile, compiled) = best(runs, || policy::compile(&cluster, scope.clone()));
        let (render, (_, stats)) = best(runs, || policy::nft::render(&compiled));
        let load = bed.as_ref().map(|bed| {
            let path = dir.path().join("ruleset.nft");
            std::fs::write(&path, policy::nft::replace_script(&compiled)).expect("write");
            let path = path.to_str().expect("utf-8");
            let load = best(runs, || {
                bed.host(0)
                    .run_ok(&["nft", "-f", path])
                    .expect("nft -f loads the ruleset")
            })
            .0;
            // What the reconciler's drift check lists every second (PolicyTable::drift).
            let list = best(runs, || {
                for family in ["inet", "bridge"] {
                    bed.host(0)
                        .run_ok(&["nft", "-j", "list", "table", family, policy::nft::TABLE])
                        .expect("nft -j list table");
                }
            })
            .0;
            (load, list)
        });
        println!(
            "| {pods} | {policies} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(parse),
            ms(compile),
            ms(render),
            load.map_or("-".to_owned(), |(l, _)| ms(l)),
            load.map_or("-".to_owned(), |(_, d)| ms(d)),
            stats.rules,
            stats.chains,
            stats.sets,
            stats.elements
        );
    }
}
