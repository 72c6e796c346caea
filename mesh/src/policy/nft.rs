//! The nftables ruleset of a compiled model, as `nft -f` text.
//!
//! Table `inet weft_policy`:
//! - base chain `forward` (hook forward): conntrack replies and established flows pass, and
//!   IPv6 neighbour discovery; then
//!   the sender's address goes through verdict map `egress_v4`/`egress_v6` and the receiver's
//!   through `ingress_v4`/`ingress_v6`. Traffic between pods of one node crosses the bridge
//!   and reaches this hook through br_netfilter (`net.bridge.bridge-nf-call-iptables`, which
//!   also gives bridged packets conntrack); traffic from other nodes, the WireGuard interface
//!   and the outside is routed, so it passes here anyway.
//! - base chain `input` (hook input): what a pod sends to the node itself (egress only: the
//!   node's own traffic to its pods is never filtered, as in Kubernetes).
//! - sets, each once however many rules use it: `aK_v4`/`aK_v6` the addresses of a policy's
//!   selected pods or of one peer, `portsK` numbered ports (`proto . port` intervals),
//!   `namedK_v4`/`_v6` named ports resolved to `address . proto . port`.
//! - per namespace and direction a chain `in_N`/`eg_N`: per policy rule, address family and
//!   peer one rule (two when a rule has numbered and named ports), each matching sets; an egress
//!   match `return`s (the receiver's ingress comes next), an ingress match `accept`s. What no
//!   rule allows is counted on the counter of each policy that isolates the pod, then dropped.

use std::fmt::Write;

use super::model::{Compiled, Direction};
use super::ranges::{int_addr, Family, Ranges};

/// The nftables table (family `inet`).
pub const TABLE: &str = "weft_policy";

/// Sizes of a ruleset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Rules in all chains, base chains included.
    pub rules: usize,
    pub chains: usize,
    pub sets: usize,
    /// Elements of all sets and maps.
    pub elements: usize,
    pub counters: usize,
}

/// The named counter of packets dropped for a forged source address.
pub const SPOOF_COUNTER: &str = "spoofed";

/// The `nft -f` input that replaces both tables (`inet` and `bridge weft_policy`) in one
/// transaction: create each (so the delete cannot fail), delete it, define it anew.
/// Established connections survive (conntrack is not touched); counters start at zero.
pub fn replace_script(compiled: &Compiled) -> String {
    let (tables, _) = render(compiled);
    format!("{}{tables}", remove_script())
}

/// The `nft -f` input that deletes both tables if they exist.
pub fn remove_script() -> String {
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable bridge {TABLE}\ndelete table bridge {TABLE}\n"
    )
}

/// The definitions of both tables, and their sizes.
pub fn render(c: &Compiled) -> (String, Stats) {
    let (mut text, mut stats) = render_inet(c);
    render_bridge(c, &mut text, &mut stats);
    (text, stats)
}

/// Table `bridge weft_policy`: anti-spoofing at the bridge ports of this node's pods. A
/// packet entering the bridge from a pod's port must carry one of that pod's addresses (or,
/// for IPv6, a link-local or the unspecified address, which neighbour discovery uses);
/// otherwise it is counted and dropped before any policy sees it. Stateless: no conntrack
/// (which the bridge family lacks here).
fn render_bridge(c: &Compiled, w: &mut String, stats: &mut Stats) {
    let _ = writeln!(w, "table bridge {TABLE} {{");
    let _ = writeln!(w, "\tcounter {SPOOF_COUNTER} {{\n\t}}");
    stats.counters += 1;
    let ports: Vec<String> = c.bindings.keys().map(|p| format!("\"{p}\"")).collect();
    set(w, stats, "pod_ports", "ifname", false, &ports);
    for f in Family::BOTH {
        let elements: Vec<String> = c
            .bindings
            .iter()
            .flat_map(|(port, addrs)| {
                addrs
                    .iter()
                    .filter(|a| Family::of(a) == f)
                    .map(move |a| format!("\"{port}\" . {a}"))
            })
            .collect();
        set(
            w,
            stats,
            &format!("sources_{}", f.suffix()),
            &format!("ifname . {}", f.addr_type()),
            false,
            &elements,
        );
    }
    let _ = writeln!(w, "\tchain prerouting {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook prerouting priority filter; policy accept;"
    );
    for rule in [
        "iifname != @pod_ports accept",
        "ether type ip iifname . ip saddr @sources_v4 accept",
        "ether type ip6 ip6 saddr { ::, fe80::/10 } accept",
        "ether type ip6 iifname . ip6 saddr @sources_v6 accept",
        "ether type { ip, ip6 } counter name \"spoofed\" drop",
    ] {
        let _ = writeln!(w, "\t\t{rule}");
        stats.rules += 1;
    }
    let _ = writeln!(w, "\t}}");
    stats.chains += 1;
    let _ = writeln!(w, "}}");
}

fn render_inet(c: &Compiled) -> (String, Stats) {
    let mut out = String::new();
    let mut stats = Stats::default();
    let w = &mut out;
    let _ = writeln!(w, "table inet {TABLE} {{");

    for p in &c.policies {
        let _ = writeln!(w, "\tcounter {} {{", p.counter);
        let _ = writeln!(w, "\t\tcomment \"{}\"", comment(&p.id.to_string()));
        let _ = writeln!(w, "\t}}");
        stats.counters += 1;
    }

    for (k, set) in c.addr_sets.iter().enumerate() {
        for f in Family::BOTH {
            let r = set.family(f);
            if !r.is_empty() {
                addr_set(w, &mut stats, &addr_name(k, f), f, r);
            }
        }
    }
    for (k, ports) in c.port_sets.iter().enumerate() {
        let elements: Vec<String> = ports
            .iter()
            .flat_map(|(proto, ranges)| {
                ranges.iter().map(move |(a, b)| {
                    if a == b {
                        format!("{} . {a}", proto.nft())
                    } else {
                        format!("{} . {a}-{b}", proto.nft())
                    }
                })
            })
            .collect();
        set(
            w,
            &mut stats,
            &format!("ports{k}"),
            "inet_proto . inet_service",
            true,
            &elements,
        );
    }
    for (k, named) in c.named_sets.iter().enumerate() {
        for f in Family::BOTH {
            let elements: Vec<String> = named
                .iter()
                .filter(|(addr, _, _)| Family::of(addr) == f)
                .map(|(addr, proto, port)| format!("{addr} . {} . {port}", proto.nft()))
                .collect();
            if !elements.is_empty() {
                set(
                    w,
                    &mut stats,
                    &format!("named{k}_{}", f.suffix()),
                    &format!("{} . inet_proto . inet_service", f.addr_type()),
                    false,
                    &elements,
                );
            }
        }
    }

    for (direction, map) in [
        (Direction::Ingress, &c.ingress_map),
        (Direction::Egress, &c.egress_map),
    ] {
        for f in Family::BOTH {
            let elements: Vec<String> = map
                .iter()
                .filter(|(addr, _)| Family::of(addr) == f)
                .map(|(addr, &chain)| format!("{addr} : jump {}", c.chains[chain].name))
                .collect();
            let _ = writeln!(w, "\tmap {direction}_{} {{", f.suffix());
            let _ = writeln!(w, "\t\ttype {} : verdict", f.addr_type());
            elements_line(w, &elements);
            let _ = writeln!(w, "\t}}");
            stats.sets += 1;
            stats.elements += elements.len();
        }
    }

    for chain in &c.chains {
        let _ = writeln!(w, "\tchain {} {{", chain.name);
        let (own, other, verdict) = match chain.direction {
            Direction::Ingress => ("daddr", "saddr", "accept"),
            Direction::Egress => ("saddr", "daddr", "return"),
        };
        let mut line = |text: String| {
            let _ = writeln!(w, "\t\t{text}");
            stats.rules += 1;
        };
        for &r in &chain.rules {
            let rule = &c.rules[r];
            let selected = c.policies[rule.policy].selected;
            for f in Family::BOTH {
                if c.addr_sets[selected].family(f).is_empty() {
                    continue;
                }
                let ip = f.nft();
                let sfx = f.suffix();
                let own_match = format!("{ip} {own} @{}", addr_name(selected, f));
                // One line per peer set (any of them), each with each kind of port.
                let heads: Vec<String> = match &rule.peers {
                    None => vec![own_match],
                    Some(peers) => peers
                        .iter()
                        .filter(|&&s| !c.addr_sets[s].family(f).is_empty())
                        .map(|&s| format!("{own_match} {ip} {other} @{}", addr_name(s, f)))
                        .collect(),
                };
                let origin = format!("comment \"{}\"", comment(&rule.origin.to_string()));
                let mut tails = Vec::new();
                match &rule.ports {
                    None => tails.push(String::new()),
                    Some(ports) => {
                        if let Some(k) = ports.numeric {
                            tails.push(format!(" meta l4proto . th dport @ports{k}"));
                        }
                        if let Some(k) = ports.named {
                            if c.named_sets[k].iter().any(|(a, _, _)| Family::of(a) == f) {
                                tails.push(format!(
                                    " {ip} daddr . meta l4proto . th dport @named{k}_{sfx}"
                                ));
                            }
                        }
                    }
                }
                for head in &heads {
                    for tail in &tails {
                        line(format!("{head}{tail} {verdict} {origin}"));
                    }
                }
            }
        }
        for &p in &chain.policies {
            let selected = c.policies[p].selected;
            for f in Family::BOTH {
                if !c.addr_sets[selected].family(f).is_empty() {
                    line(format!(
                        "{} {own} @{} counter name \"{}\"",
                        f.nft(),
                        addr_name(selected, f),
                        c.policies[p].counter
                    ));
                }
            }
        }
        line("drop".to_owned());
        let _ = writeln!(w, "\t}}");
        stats.chains += 1;
    }

    for (name, hook, directions) in [
        (
            "forward",
            "forward",
            &[Direction::Egress, Direction::Ingress][..],
        ),
        ("input", "input", &[Direction::Egress][..]),
    ] {
        let _ = writeln!(w, "\tchain {name} {{");
        let _ = writeln!(
            w,
            "\t\ttype filter hook {hook} priority filter; policy accept;"
        );
        let mut line = |text: String| {
            let _ = writeln!(w, "\t\t{text}");
            stats.rules += 1;
        };
        line("ct state established,related accept".to_owned());
        // IPv6 neighbour discovery between pods on the bridge is no connection to filter
        // (ARP, its IPv4 counterpart, never reaches these hooks).
        line(
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept"
                .to_owned(),
        );
        for d in directions {
            let field = match d {
                Direction::Egress => "saddr",
                Direction::Ingress => "daddr",
            };
            for f in Family::BOTH {
                line(format!("{} {field} vmap @{d}_{}", f.nft(), f.suffix()));
            }
        }
        let _ = writeln!(w, "\t}}");
        stats.chains += 1;
    }
    let _ = writeln!(w, "}}");
    (out, stats)
}

/// The nft set holding address set `k`'s addresses of family `f`.
fn addr_name(k: usize, f: Family) -> String {
    format!("a{k}_{}", f.suffix())
}

/// A comment nft takes: at most 128 bytes, no quotes. Policy names are DNS names (checked),
/// so only their length can be a problem.
fn comment(text: &str) -> String {
    let clean: String = text.chars().filter(|c| *c != '"' && *c != '\\').collect();
    if clean.len() <= 120 {
        return clean;
    }
    let mut cut = 117;
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &clean[..cut])
}

fn elements_line(w: &mut String, elements: &[String]) {
    if elements.is_empty() {
        return;
    }
    let _ = write!(w, "\t\telements = {{ ");
    for (i, e) in elements.iter().enumerate() {
        if i > 0 {
            w.push_str(if i % 8 == 0 { ",\n\t\t\t" } else { ", " });
        }
        w.push_str(e);
    }
    let _ = writeln!(w, " }}");
}

fn set(
    w: &mut String,
    stats: &mut Stats,
    name: &str,
    ty: &str,
    interval: bool,
    elements: &[String],
) {
    let _ = writeln!(w, "\tset {name} {{");
    let _ = writeln!(w, "\t\ttype {ty}");
    if interval {
        let _ = writeln!(w, "\t\tflags interval");
    }
    elements_line(w, elements);
    let _ = writeln!(w, "\t}}");
    stats.sets += 1;
    stats.elements += elements.len();
}

fn addr_set(w: &mut String, stats: &mut Stats, name: &str, f: Family, ranges: &Ranges) {
    let elements: Vec<String> = ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                int_addr(f, a).to_string()
            } else {
                format!("{}-{}", int_addr(f, a), int_addr(f, b))
            }
        })
        .collect();
    set(w, stats, name, f.addr_type(), true, &elements);
}
