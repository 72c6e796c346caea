//! Drift: weft's own state on the host changed by someone else (`nft flush ruleset`, a route
//! or the bridge deleted by hand), as opposed to a change of the state weft wants.
//!
//! Pure, like [`super::model`]: [`drift`] names each difference between what the host has and
//! what weft wants; [`DriftLog`] decides, round after round, which of them to report and
//! count, so a drift is logged once when it appears (and once more when a failed repair
//! finally works), never once per round while it lasts.

use std::collections::BTreeSet;
use std::fmt;

use super::model::{CurrentState, FirewallState, HostState, RouteSpec, RuleSpec, ROUTE_TABLE};
use super::{NAT_CHAIN, NFT_TABLE};

/// What a drift is about, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    /// The nftables fail-closed table.
    Firewall,
    /// The bridge, its address, MTU or up state, or a pod interface off it.
    Bridge,
    /// A route in weft's table.
    Route,
    /// The `ip rule` that looks up weft's table.
    Rule,
}

impl DriftKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [DriftKind; 4] = [
        DriftKind::Firewall,
        DriftKind::Bridge,
        DriftKind::Route,
        DriftKind::Rule,
    ];

    /// The metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DriftKind::Firewall => "firewall",
            DriftKind::Bridge => "bridge",
            DriftKind::Route => "route",
            DriftKind::Rule => "rule",
        }
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One way the host differs from what weft wants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Drift {
    /// The nftables table is gone.
    FirewallMissing,
    /// The nftables table is there but holds other rules.
    FirewallAltered,
    /// The table is weft's, but its masquerading chain is gone (masquerading wanted).
    MasqueradeMissing,
    /// The table is weft's, with a masquerading chain weft does not want.
    MasqueradeStray,
    /// The bridge is gone.
    BridgeMissing(String),
    /// Another kind of link has the bridge's name.
    BridgeReplaced(String),
    /// The bridge lost its address, is down or has another MTU.
    BridgeAltered(String),
    /// A pod's interface is on no bridge.
    PortLoose(String),
    /// A route weft wants is missing.
    RouteMissing(RouteSpec),
    /// A route with weft's marks that weft does not want.
    RouteStray(RouteSpec),
    RuleMissing(RuleSpec),
    RuleStray(RuleSpec),
}

impl Drift {
    pub fn kind(&self) -> DriftKind {
        match self {
            Drift::FirewallMissing
            | Drift::FirewallAltered
            | Drift::MasqueradeMissing
            | Drift::MasqueradeStray => DriftKind::Firewall,
            Drift::BridgeMissing(_)
            | Drift::BridgeReplaced(_)
            | Drift::BridgeAltered(_)
            | Drift::PortLoose(_) => DriftKind::Bridge,
            Drift::RouteMissing(_) | Drift::RouteStray(_) => DriftKind::Route,
            Drift::RuleMissing(_) | Drift::RuleStray(_) => DriftKind::Rule,
        }
    }

    /// What a successful repair did, for the log line ("...: restored").
    pub fn repair(&self) -> &'static str {
        match self {
            Drift::FirewallMissing
            | Drift::FirewallAltered
            | Drift::MasqueradeMissing
            | Drift::BridgeAltered(_)
            | Drift::RouteMissing(_)
            | Drift::RuleMissing(_) => "restored",
            Drift::BridgeMissing(_) | Drift::BridgeReplaced(_) => "recreated",
            Drift::PortLoose(_) => "put back on the bridge",
            Drift::MasqueradeStray | Drift::RouteStray(_) | Drift::RuleStray(_) => "removed",
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::FirewallMissing => write!(f, "nftables table inet {NFT_TABLE} missing"),
            Drift::FirewallAltered => write!(f, "nftables table inet {NFT_TABLE} altered"),
            Drift::MasqueradeMissing => {
                write!(f, "nftables chain inet {NFT_TABLE} {NAT_CHAIN} missing")
            }
            Drift::MasqueradeStray => {
                write!(f, "unexpected nftables chain inet {NFT_TABLE} {NAT_CHAIN}")
            }
            Drift::BridgeMissing(name) => write!(f, "bridge {name} deleted"),
            Drift::BridgeReplaced(name) => write!(f, "link {name} is not a bridge"),
            Drift::BridgeAltered(name) => {
                write!(f, "bridge {name} lost its address, MTU or up state")
            }
            Drift::PortLoose(name) => write!(f, "pod interface {name} off the bridge"),
            Drift::RouteMissing(r) => write!(f, "route {} via {} deleted", r.dst, r.dev),
            Drift::RouteStray(r) => write!(f, "unexpected route {} via {}", r.dst, r.dev),
            Drift::RuleMissing(r) => write!(
                f,
                "{} rule pref {} lookup {} deleted",
                r.family, r.priority, r.table
            ),
            Drift::RuleStray(r) => write!(
                f,
                "unexpected {} rule pref {} lookup {}",
                r.family, r.priority, r.table
            ),
        }
    }
}

/// Every difference between `current` and `desired`, one entry per thing that differs. Empty
/// exactly when [`super::plan`] is.
pub fn drift(current: &CurrentState, desired: &HostState) -> Vec<Drift> {
    let mut out = Vec::new();
    match &current.firewall {
        FirewallState::Weft(spec) if *spec == desired.fail_closed => {}
        FirewallState::Missing => out.push(Drift::FirewallMissing),
        // Only the masquerading chain differs: say so (someone deleted that chain).
        FirewallState::Weft(spec)
            if spec.with_masquerade(desired.fail_closed.masquerade) == desired.fail_closed =>
        {
            out.push(if desired.fail_closed.masquerade {
                Drift::MasqueradeMissing
            } else {
                Drift::MasqueradeStray
            });
        }
        FirewallState::Weft(_) | FirewallState::Other => out.push(Drift::FirewallAltered),
    }
    if let Some(bridge) = &desired.bridge {
        let name = || bridge.name.clone();
        match &current.bridge {
            None => out.push(Drift::BridgeMissing(name())),
            Some(state) if !state.is_bridge => out.push(Drift::BridgeReplaced(name())),
            Some(state) => {
                if state.mtu != bridge.mtu
                    || !state.up
                    || state.addresses != BTreeSet::from([bridge.gateway])
                {
                    out.push(Drift::BridgeAltered(name()));
                }
            }
        }
        out.extend(current.loose_ports.iter().cloned().map(Drift::PortLoose));
    }
    let rules = desired.rules();
    out.extend(
        rules
            .difference(&current.rules)
            .copied()
            .map(Drift::RuleMissing),
    );
    out.extend(
        current
            .rules
            .iter()
            .filter(|r| r.table == ROUTE_TABLE && !rules.contains(r))
            .copied()
            .map(Drift::RuleStray),
    );
    out.extend(
        desired
            .routes
            .difference(&current.routes)
            .cloned()
            .map(Drift::RouteMissing),
    );
    out.extend(
        current
            .routes
            .iter()
            .filter(|r| r.is_weft() && !desired.routes.contains(r))
            .cloned()
            .map(Drift::RouteStray),
    );
    out
}

/// What to report about one drift after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftEvent {
    /// Found and repaired: log it, count it.
    Repaired(Drift),
    /// Found, and the repair failed: log it once; it is retried every round.
    Failing(Drift),
}

/// Remembers the drift of the last round, so each occurrence is reported once.
///
/// Call [`DriftLog::round`] once per reconcile round with what [`drift`] found before the
/// changes were applied and whether applying them worked. A round whose desired state is new
/// (the first one, a view change, a new device) is an update, not drift: its differences are
/// remembered and not reported, so a failed update that later succeeds is not called drift
/// either. (A drift in the very round the desired state changes is repaired all the same, just
/// not reported.)
#[derive(Debug, Clone, Default)]
pub struct DriftLog {
    /// What the last round found.
    last: BTreeSet<Drift>,
    /// Reported as failing and not repaired since.
    failing: BTreeSet<Drift>,
}

impl DriftLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// One round: `found` is what [`drift`] returned, `update` whether the desired state
    /// differs from the last round's, `repaired` whether every change was applied.
    #[must_use]
    pub fn round(&mut self, found: Vec<Drift>, update: bool, repaired: bool) -> Vec<DriftEvent> {
        let found: BTreeSet<Drift> = found.into_iter().collect();
        let mut events = Vec::new();
        if update {
            self.failing.clear();
        } else {
            for d in &found {
                let new = !self.last.contains(d);
                let was_failing = self.failing.contains(d);
                match (repaired, new || was_failing) {
                    (true, true) => {
                        self.failing.remove(d);
                        events.push(DriftEvent::Repaired(d.clone()));
                    }
                    (false, true) if !was_failing => {
                        self.failing.insert(d.clone());
                        events.push(DriftEvent::Failing(d.clone()));
                    }
                    _ => {}
                }
            }
            // Gone without our doing (someone put it back, or it no longer matters).
            self.failing.retain(|d| found.contains(d));
        }
        self.last = found;
        events
    }
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;
    use crate::host::model::{plan, BridgeSpec, Family, BRIDGE_NAME, DEFAULT_MTU, ROUTE_PROTOCOL};

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn desired() -> HostState {
        let mut state = HostState::new(
            BridgeSpec {
                name: BRIDGE_NAME.into(),
                gateway: net("10.32.1.1/24"),
                mtu: DEFAULT_MTU,
            },
            "weft-wg",
            [net("10.32.0.0/12")],
            [net("10.32.1.0/24")],
        );
        state.set_masquerade(true);
        for p in ["10.32.2.0/24", "10.32.3.0/24"] {
            state.add_peer_space(net(p)).expect("valid peer space");
        }
        state
    }

    fn route(d: &HostState, dst: &str) -> RouteSpec {
        d.routes
            .iter()
            .find(|r| r.dst == net(dst))
            .cloned()
            .expect("a wanted route")
    }

    #[test]
    fn applied_state_has_no_drift() {
        let d = desired();
        assert_eq!(drift(&d.as_applied(), &d), Vec::new());
    }

    #[test]
    fn flushed_ruleset_deleted_route_and_deleted_bridge_are_named() {
        let d = desired();
        let mut current = d.as_applied();
        current.firewall = FirewallState::Missing;
        current.routes.remove(&route(&d, "10.32.2.0/24"));
        current.bridge = None;
        current.loose_ports.insert("vw0123456789ab".into());
        let found = drift(&current, &d);
        assert_eq!(
            found,
            vec![
                Drift::FirewallMissing,
                Drift::BridgeMissing("weft".into()),
                Drift::PortLoose("vw0123456789ab".into()),
                Drift::RouteMissing(route(&d, "10.32.2.0/24")),
            ]
        );
        let lines: Vec<String> = found
            .iter()
            .map(|d| format!("{d}: {}", d.repair()))
            .collect();
        assert_eq!(
            lines,
            [
                "nftables table inet weft missing: restored",
                "bridge weft deleted: recreated",
                "pod interface vw0123456789ab off the bridge: put back on the bridge",
                "route 10.32.2.0/24 via weft-wg deleted: restored",
            ]
        );
        let kinds: Vec<DriftKind> = found.iter().map(Drift::kind).collect();
        assert_eq!(
            kinds,
            [
                DriftKind::Firewall,
                DriftKind::Bridge,
                DriftKind::Bridge,
                DriftKind::Route
            ]
        );
    }

    #[test]
    fn altered_table_stray_route_and_missing_rule() {
        let d = desired();
        let mut current = d.as_applied();
        current.firewall = FirewallState::Other;
        let stray = RouteSpec::weft(net("10.32.9.0/24"), "weft-wg");
        current.routes.insert(stray.clone());
        current.rules.clear();
        // A foreign route in weft's table (another protocol) is no drift.
        current.routes.insert(RouteSpec {
            protocol: ROUTE_PROTOCOL + 1,
            ..RouteSpec::weft(net("10.32.8.0/24"), "eth0")
        });
        assert_eq!(
            drift(&current, &d),
            vec![
                Drift::FirewallAltered,
                Drift::RuleMissing(RuleSpec::weft(Family::V4)),
                Drift::RouteStray(stray),
            ]
        );
    }

    #[test]
    fn a_deleted_masquerade_chain_is_named_apart_from_the_table() {
        let d = desired();
        let mut current = d.as_applied();
        // `nft delete chain inet weft masquerading`: the rest of the table is weft's.
        current.firewall = FirewallState::Weft(d.fail_closed.with_masquerade(false));
        let found = drift(&current, &d);
        assert_eq!(found, vec![Drift::MasqueradeMissing]);
        assert_eq!(
            format!("{}: {}", found[0], found[0].repair()),
            "nftables chain inet weft masquerading missing: restored"
        );
        assert_eq!(found[0].kind(), DriftKind::Firewall);
        assert_eq!(
            plan(&current, &d),
            vec![crate::host::Change::ReplaceFirewall(d.fail_closed.clone())]
        );
        // Masquerading turned off, the chain still there: stray, removed.
        let mut off = d.clone();
        off.set_masquerade(false);
        let found = drift(&d.as_applied(), &off);
        assert_eq!(found, vec![Drift::MasqueradeStray]);
        assert_eq!(
            format!("{}: {}", found[0], found[0].repair()),
            "unexpected nftables chain inet weft masquerading: removed"
        );
        // Another change besides (a cluster range): the table as a whole is altered.
        let mut other = d.fail_closed.with_masquerade(false);
        other.local_space.clear();
        current.firewall = FirewallState::Weft(other);
        assert_eq!(drift(&current, &d), vec![Drift::FirewallAltered]);
    }

    fn log_round(log: &mut DriftLog, found: &[&Drift], update: bool, ok: bool) -> Vec<DriftEvent> {
        log.round(found.iter().map(|d| (*d).clone()).collect(), update, ok)
    }

    #[test]
    fn a_drift_is_reported_once_per_occurrence() {
        let mut log = DriftLog::new();
        let gone = Drift::FirewallMissing;
        // The first round sets everything up: an update, nothing reported.
        assert_eq!(log_round(&mut log, &[&gone], true, true), []);
        assert_eq!(log_round(&mut log, &[], false, true), []);
        // Flushed: found, repaired, reported.
        assert_eq!(
            log_round(&mut log, &[&gone], false, true),
            [DriftEvent::Repaired(gone.clone())]
        );
        assert_eq!(log_round(&mut log, &[], false, true), []);
        // Flushed again: a new occurrence.
        assert_eq!(
            log_round(&mut log, &[&gone], false, true),
            [DriftEvent::Repaired(gone.clone())]
        );
        // A repair that does not hold (something undoes it every round) is reported once.
        assert_eq!(log_round(&mut log, &[&gone], false, true), []);
        assert_eq!(log_round(&mut log, &[&gone], false, true), []);
    }

    #[test]
    fn a_failing_repair_is_reported_once_then_once_more_when_it_works() {
        let mut log = DriftLog::new();
        let route = Drift::RouteMissing(RouteSpec::weft(net("10.32.2.0/24"), "weft-wg"));
        assert_eq!(log_round(&mut log, &[], true, true), []);
        assert_eq!(
            log_round(&mut log, &[&route], false, false),
            [DriftEvent::Failing(route.clone())]
        );
        for _ in 0..5 {
            assert_eq!(log_round(&mut log, &[&route], false, false), []);
        }
        assert_eq!(
            log_round(&mut log, &[&route], false, true),
            [DriftEvent::Repaired(route.clone())]
        );
        assert_eq!(log_round(&mut log, &[], false, true), []);
        // Failing, then fixed by someone else: nothing more to say.
        assert_eq!(
            log_round(&mut log, &[&route], false, false),
            [DriftEvent::Failing(route.clone())]
        );
        assert_eq!(log_round(&mut log, &[], false, true), []);
        assert_eq!(
            log_round(&mut log, &[&route], false, false),
            [DriftEvent::Failing(route)]
        );
    }

    #[test]
    fn an_update_that_fails_is_not_drift_when_it_later_works() {
        let mut log = DriftLog::new();
        let route = Drift::RouteMissing(RouteSpec::weft(net("10.32.2.0/24"), "weft-wg"));
        assert_eq!(log_round(&mut log, &[&route], true, false), []);
        assert_eq!(log_round(&mut log, &[&route], false, false), []);
        assert_eq!(log_round(&mut log, &[&route], false, true), []);
        assert_eq!(log_round(&mut log, &[], false, true), []);
    }

    /// One random way of disturbing an applied host.
    #[derive(Debug, Clone)]
    enum Disturb {
        Firewall(u8),
        Bridge(u8),
        LoosePort(u8),
        DropRoute(usize),
        StrayRoute(u8),
        DropRules,
        StrayRule(u32),
    }

    fn disturbance() -> impl Strategy<Value = Disturb> {
        prop_oneof![
            (0u8..3).prop_map(Disturb::Firewall),
            (0u8..5).prop_map(Disturb::Bridge),
            any::<u8>().prop_map(Disturb::LoosePort),
            (0usize..4).prop_map(Disturb::DropRoute),
            any::<u8>().prop_map(Disturb::StrayRoute),
            Just(Disturb::DropRules),
            any::<u32>().prop_map(Disturb::StrayRule),
        ]
    }

    fn disturb(current: &mut CurrentState, d: &HostState, how: &Disturb) {
        match how {
            Disturb::Firewall(0) => current.firewall = FirewallState::Missing,
            Disturb::Firewall(1) => current.firewall = FirewallState::Other,
            Disturb::Firewall(_) => {
                if let FirewallState::Weft(spec) = &current.firewall {
                    current.firewall = FirewallState::Weft(spec.with_masquerade(false));
                }
            }
            Disturb::Bridge(n) => match (n, current.bridge.as_mut()) {
                (0, _) => current.bridge = None,
                (1, Some(b)) => b.is_bridge = false,
                (2, Some(b)) => b.up = false,
                (3, Some(b)) => b.mtu = 1500,
                (_, Some(b)) => {
                    b.addresses.clear();
                }
                (_, None) => {}
            },
            Disturb::LoosePort(n) => {
                current.loose_ports.insert(format!("vw{n:012x}"));
            }
            Disturb::DropRoute(i) => {
                if let Some(r) = d.routes.iter().nth(i % d.routes.len()).cloned() {
                    current.routes.remove(&r);
                }
            }
            Disturb::StrayRoute(n) => {
                current
                    .routes
                    .insert(RouteSpec::weft(net(&format!("10.40.{n}.0/24")), "weft-wg"));
            }
            Disturb::DropRules => current.rules.clear(),
            Disturb::StrayRule(p) => {
                current.rules.insert(RuleSpec {
                    priority: *p,
                    ..RuleSpec::weft(Family::V6)
                });
            }
        }
    }

    proptest! {
        /// Drift is found exactly when there is something to change; applying the plan's
        /// changes to the model leaves none.
        #[test]
        fn drift_and_plan_agree(hows in proptest::collection::vec(disturbance(), 0..6)) {
            let d = desired();
            let mut current = d.as_applied();
            for how in &hows {
                disturb(&mut current, &d, how);
            }
            prop_assert_eq!(drift(&current, &d).is_empty(), plan(&current, &d).is_empty());
            let kinds: BTreeSet<DriftKind> = drift(&current, &d).iter().map(Drift::kind).collect();
            for how in &hows {
                let kind = match how {
                    Disturb::Firewall(_) => DriftKind::Firewall,
                    Disturb::Bridge(_) | Disturb::LoosePort(_) => DriftKind::Bridge,
                    Disturb::DropRoute(_) | Disturb::StrayRoute(_) => DriftKind::Route,
                    Disturb::DropRules | Disturb::StrayRule(_) => DriftKind::Rule,
                };
                prop_assert!(kinds.contains(&kind), "{:?} not seen as {}", how, kind);
            }
        }
    }
}
