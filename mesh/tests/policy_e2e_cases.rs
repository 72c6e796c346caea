//! The cases of the Kubernetes e2e network-policy suite (mesh/tests/policy_common/e2e.rs)
//! against the compiled model: pods spread over two nodes, the full 9 x 9 matrix on each
//! port must match `why`, for the cluster and as the AND of both nodes' rulesets.

use weft_mesh::policy::{self, Scope};

mod policy_common;
use policy_common::e2e::{cases, cluster, Flow, NS, PODS, PORTS};

fn check(case: &str, yaml: &str, expect: &dyn Fn(Flow) -> bool) {
    let c = cluster(yaml);
    let whole = policy::compile(&c, Scope::Cluster);
    let nodes = [
        policy::compile(&c, Scope::Node("n1".into())),
        policy::compile(&c, Scope::Node("n2".into())),
    ];
    let mut wrong = Vec::new();
    let mut open = 0;
    for fns in NS {
        for fp in PODS {
            for tns in NS {
                for tp in PODS {
                    if (fns, fp) == (tns, tp) {
                        continue;
                    }
                    for (proto, port) in PORTS {
                        let from = format!("{fns}/{fp}").parse().expect("endpoint");
                        let to = format!("{tns}/{tp}").parse().expect("endpoint");
                        let why = whole.why(&from, &to, proto, port).expect("pods");
                        let both = nodes
                            .iter()
                            .all(|m| m.why(&from, &to, proto, port).expect("pods").allowed);
                        let want = expect((fns, fp, tns, tp, proto, port));
                        open += usize::from(want);
                        if why.allowed != want || both != want {
                            wrong.push(format!("{why} (nodes: {both}, want {want})"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{case}: {} flows differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every case denies something and allows something.
    assert!(open > 0 && open < 9 * 8 * 3, "{case}: {open} open");
}

#[test]
fn kubernetes_e2e_cases_match_the_model() {
    let all = cases();
    assert!(all.len() >= 15, "{} cases", all.len());
    for case in &all {
        check(case.name, &case.yaml, &case.expect);
    }
}
