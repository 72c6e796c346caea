//! This crate's one error type.

/// What can go wrong talking to Kubernetes or reading what it says.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No in-cluster configuration (not running in a pod with a service account) and no
    /// usable kubeconfig.
    #[error("no Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// A request to the API server failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// A Node's pod CIDR is not a network address in CIDR notation.
    #[error("Node {node}: pod CIDR {value:?} is not a network in CIDR notation")]
    InvalidPodCidr {
        /// The Node's name.
        node: String,
        /// The value found.
        value: String,
    },
    /// A Node lists more than one pod CIDR of one address family, or the same twice.
    #[error("Node {node}: pod CIDRs {values:?} are not one per address family")]
    PodCidrFamilies {
        /// The Node's name.
        node: String,
        /// The values found.
        values: Vec<String>,
    },
}
