//! A client for the API server: from a kubeconfig file, or in a cluster from the pod's
//! service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::{Error, Result};

/// A client from `kubeconfig` (its current context), or without one from the environment:
/// in a pod the in-cluster service account, else `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(Client::try_from(config(kubeconfig).await?)?)
}

/// The configuration [`client`] uses.
pub async fn config(kubeconfig: Option<&Path>) -> Result<Config> {
    match kubeconfig {
        Some(path) => {
            let wrap = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(wrap)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(wrap)
        }
        None => Ok(Config::infer().await?),
    }
}
