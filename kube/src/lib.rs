//! weft on Kubernetes: what the daemon takes from the API server, and the one thing it writes.
//!
//! The API is a source of seeds, address ranges, pod identities and policies, not the mesh's
//! state: weft keeps no datastore of its own and keeps working while the API server is away.
//!
//! - [`watch`]: kube-rs runtime watchers (watcher + reflector, with backoff; a watch whose
//!   resource version expired, 410 Gone, relists) for Nodes, Pods, Namespaces and
//!   NetworkPolicies, with their health for /readyz and /metrics.
//! - [`model`]: pure functions from those objects to what the daemon needs: the gossip seeds
//!   (other Nodes' addresses), a Node's pod CIDRs, pod and namespace identities, policies.
//! - [`status`]: the Node's `NetworkUnavailable=False` condition (a strategic-merge patch on
//!   `nodes/status`, the only write weft's ClusterRole allows).
//! - [`client`]: a client from a kubeconfig file or the in-cluster service account.
//!
//! Tested against a real kube-apiserver 1.20.2 with etcd (tests/apiserver.rs; the binary is
//! built by tests/kube/build-apiserver.sh).

pub mod client;
pub mod model;
pub mod status;
pub mod watch;

mod error;
pub use error::Error;
/// The Kubernetes client and object types this crate is built on, for its users.
pub use {k8s_openapi, kube};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
