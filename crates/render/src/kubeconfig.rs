//! The admin kubeconfig (`kubeconfig/admin.conf`), as kubeadm writes `admin.conf`, but
//! issued by hakube from the cluster CA so the user has kubectl access without copying
//! files off a master.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

use crate::pki::{ExtendedUsage, Issued, LeafSpec};

/// The admin user's name in the kubeconfig and the CN of its client certificate.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The admin client certificate's O: the group kubeadm (since 1.29) binds to
/// `cluster-admin` during `kubeadm init`.
pub const ADMIN_GROUP: &str = "kubeadm:cluster-admins";

/// What went wrong rendering a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// No API server address was given.
    #[error("failed to render the admin kubeconfig of cluster {cluster:?}: no API server address given")]
    NoServers {
        /// The cluster name.
        cluster: String,
    },
    /// Two server entries would make clusters and contexts with the same name.
    #[error("failed to render the admin kubeconfig of cluster {cluster:?}: two API server entries are named {name:?}")]
    DuplicateName {
        /// The cluster name.
        cluster: String,
        /// The repeated cluster name.
        name: String,
    },
    /// The YAML serialiser failed.
    #[error("failed to render the admin kubeconfig of cluster {cluster:?}")]
    Serialize {
        /// The cluster name.
        cluster: String,
        /// The serialiser's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
}

/// The client certificate spec of `admin.conf` (kubeadm's table): CN `kubernetes-admin`,
/// O `kubeadm:cluster-admins`, clientAuth, no SANs. `validity` is the leaf lifetime
/// (kubeadm's `certificateValidityPeriod`).
pub fn admin_client_spec(validity: Duration) -> LeafSpec {
    LeafSpec {
        common_name: ADMIN_USER.to_owned(),
        organizations: vec![ADMIN_GROUP.to_owned()],
        dns_names: Vec::new(),
        ips: Vec::new(),
        usages: vec![ExtendedUsage::ClientAuth],
        validity,
    }
}

/// Renders the admin kubeconfig YAML (`apiVersion: v1`, `kind: Config`).
///
/// `servers` lists `(label, https URL)` pairs; each gets a cluster and a context, and the
/// first (the control-plane endpoint, e.g. the master load balancer) is the
/// current-context. The first entry is named after the cluster alone — cluster
/// `<cluster_name>`, context `kubernetes-admin@<cluster_name>` — and its label is not
/// used; every other entry is named `<cluster_name>-<label>` (context
/// `kubernetes-admin@<cluster_name>-<label>`), the label usually being a master's FQDN.
/// One user, `kubernetes-admin`. `ca_cert_pem` and the client certificate and key are
/// embedded base64 (`certificate-authority-data`, `client-certificate-data`,
/// `client-key-data`), so the file is a secret.
///
/// # Errors
///
/// [`KubeconfigError::NoServers`] when `servers` is empty,
/// [`KubeconfigError::DuplicateName`] when two entries get the same name.
pub fn admin_kubeconfig(
    cluster_name: &str,
    servers: &[(String, String)],
    ca_cert_pem: &str,
    client: &Issued,
) -> Result<String, KubeconfigError> {
    if servers.is_empty() {
        return Err(KubeconfigError::NoServers { cluster: cluster_name.to_owned() });
    }
    let ca_data = STANDARD.encode(ca_cert_pem);
    let mut seen = BTreeSet::new();
    let mut clusters = Vec::new();
    let mut contexts = Vec::new();
    for (index, (label, url)) in servers.iter().enumerate() {
        let name = if index == 0 { cluster_name.to_owned() } else { format!("{cluster_name}-{label}") };
        if !seen.insert(name.clone()) {
            return Err(KubeconfigError::DuplicateName { cluster: cluster_name.to_owned(), name });
        }
        clusters.push(NamedCluster {
            name: name.clone(),
            cluster: Cluster { certificate_authority_data: ca_data.clone(), server: url.clone() },
        });
        contexts.push(NamedContext {
            name: format!("{ADMIN_USER}@{name}"),
            context: Context { cluster: name, user: ADMIN_USER.to_owned() },
        });
    }
    let config = Config {
        api_version: "v1",
        current_context: contexts[0].name.clone(),
        clusters,
        contexts,
        kind: "Config",
        preferences: Preferences {},
        users: vec![NamedUser {
            name: ADMIN_USER.to_owned(),
            user: User {
                client_certificate_data: STANDARD.encode(&client.cert_pem),
                client_key_data: STANDARD.encode(&client.key_pem),
            },
        }],
    };
    serde_yaml_ng::to_string(&config)
        .map_err(|source| KubeconfigError::Serialize { cluster: cluster_name.to_owned(), source })
}

/// `clientcmd/api/v1.Config`, the fields admin.conf uses, in kubeadm's order.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Config {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    current_context: String,
    kind: &'static str,
    preferences: Preferences,
    users: Vec<NamedUser>,
}

#[derive(Serialize)]
struct Preferences {}

#[derive(Serialize)]
struct NamedCluster {
    cluster: Cluster,
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    certificate_authority_data: String,
    server: String,
}

#[derive(Serialize)]
struct NamedContext {
    context: Context,
    name: String,
}

#[derive(Serialize)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Serialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: String,
    client_key_data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Issued {
        Issued { cert_pem: "CERT".into(), key_pem: "KEY".into() }
    }

    #[test]
    fn no_servers_is_an_error() {
        let err = admin_kubeconfig("c", &[], "CA", &client()).unwrap_err();
        assert!(matches!(err, KubeconfigError::NoServers { .. }), "{err}");
    }

    #[test]
    fn duplicate_labels_are_an_error() {
        let servers = [
            ("lb".to_owned(), "https://lb:6443".to_owned()),
            ("m1".to_owned(), "https://m1:6443".to_owned()),
            ("m1".to_owned(), "https://m1:6443".to_owned()),
        ];
        let err = admin_kubeconfig("c", &servers, "CA", &client()).unwrap_err();
        assert!(err.to_string().contains("\"c-m1\""), "{err}");
    }
}
