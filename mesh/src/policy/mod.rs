//! Network policy: Kubernetes NetworkPolicy (networking.k8s.io/v1) semantics, enforced with
//! nftables on the pods of this node. See docs/POLICY.md.
//!
//! - [`spec`]: the API objects as kubectl reads them, [`parse`] (multi-document YAML) and
//!   validation into [`Policy`] (an invalid policy is refused whole, with its field path).
//! - [`model`]: the pure compiler, [`compile`] (policies, pods, namespaces and nodes in; the
//!   compiled model out) and [`Compiled::why`], the verdict for one flow and what decides it.
//! - [`nft`]: the model as one `nft -f` script (sets, verdict maps, one chain per namespace
//!   and direction, named drop counters), replacing table `inet weft_policy` atomically.
//! - [`driver`]: runs nft, reads the counters.
//!
//! ```
//! use weft_mesh::policy::{self, Cluster, Endpoint, Pod, Protocol, Scope};
//!
//! let policies = policy::parse(r#"
//! apiVersion: networking.k8s.io/v1
//! kind: NetworkPolicy
//! metadata: {name: web, namespace: shop}
//! spec:
//!   podSelector: {matchLabels: {app: web}}
//!   ingress:
//!   - from: [{podSelector: {matchLabels: {app: lb}}}]
//!     ports: [{port: 80}]
//! "#, "default").expect("a valid policy");
//! let pod = |name: &str, app: &str, addr: &str| Pod {
//!     namespace: "shop".into(), name: name.into(),
//!     labels: [("app".to_owned(), app.to_owned())].into(),
//!     addresses: vec![addr.parse().unwrap()], ports: vec![],
//!     node: "n1".into(), interface: None,
//! };
//! let cluster = Cluster {
//!     policies,
//!     pods: vec![pod("web", "web", "10.32.1.2"), pod("lb", "lb", "10.32.1.3"), pod("db", "db", "10.32.1.4")],
//!     ..Cluster::default()
//! };
//! let model = policy::compile(&cluster, Scope::Node("n1".into()));
//! let ok = model.why(&"shop/lb".parse().unwrap(), &"shop/web".parse().unwrap(), Protocol::Tcp, 80).unwrap();
//! assert!(ok.allowed);
//! let no = model.why(&"shop/db".parse().unwrap(), &"shop/web".parse().unwrap(), Protocol::Tcp, 80).unwrap();
//! assert!(!no.allowed);
//! let script = policy::nft::replace_script(&model); // for `nft -f -`
//! assert!(script.contains("table inet weft_policy"));
//! ```

#![forbid(unsafe_code)]

pub mod driver;
pub mod model;
pub mod nft;
pub mod ranges;
pub mod spec;

pub use driver::{Drift, PolicyTable};
pub use model::{
    compile, Cluster, Compiled, Decision, Direction, Endpoint, NamedPort, Node, Pod, RuleRef,
    Scope, Why, NAMESPACE_NAME_LABEL,
};
pub use spec::{parse, NetworkPolicy, Policy, PolicyName, Protocol};
