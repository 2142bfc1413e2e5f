//! The inbound ports each node needs open, by role and network add-on, for the prepare step's
//! firewall (firewalld) handling, and the interfaces a network add-on asks NetworkManager to
//! leave alone. Data with its sources.

use crate::definition::ClusterDefinition;
use crate::{HookCatalog, Role};

/// One inbound port or range, as firewalld writes it (`6443/tcp`, `30000-32767/udp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// `6443` or `30000-32767`.
    pub port: &'static str,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// What listens there.
    pub purpose: &'static str,
}

impl Port {
    /// `PORT/PROTOCOL`, as `firewall-cmd --add-port` takes it.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

const fn port(port: &'static str, protocol: &'static str, purpose: &'static str) -> Port {
    Port { port, protocol, purpose }
}

/// Kubernetes' ports of a control-plane node (kubernetes.io "Ports and Protocols",
/// kubernetes/website content/en/docs/reference/networking/ports-and-protocols.md):
/// the API server, etcd (hakube's masters run it with either topology), the kubelet, the
/// scheduler and the controller manager.
pub const CONTROL_PLANE: &[Port] = &[
    port("6443", "tcp", "Kubernetes API server"),
    port("2379-2380", "tcp", "etcd client and peer"),
    port("10250", "tcp", "kubelet API"),
    port("10259", "tcp", "kube-scheduler"),
    port("10257", "tcp", "kube-controller-manager"),
];

/// Kubernetes' ports of every node (the same page's worker table: the kubelet, kube-proxy's
/// health check, NodePort Services over TCP and UDP); masters run a kubelet and kube-proxy
/// too.
pub const EVERY_NODE: &[Port] = &[
    port("10250", "tcp", "kubelet API"),
    port("10256", "tcp", "kube-proxy health check"),
    port("30000-32767", "tcp", "NodePort Services"),
    port("30000-32767", "udp", "NodePort Services"),
];

/// The ports each built-in network add-on needs between nodes, `(provider, ports)`:
/// - Calico, as hakube configures it (VXLAN across subnets, BGP within, Typha from the
///   operator): TCP 179, UDP 4789, TCP 5473 (tigera/docs
///   `calico/_includes/partials/_system-requirements.mdx`, "Network requirements");
/// - Cilium (VXLAN, its health checks, Hubble): UDP 8472, TCP 4240, TCP 4244 (cilium/cilium
///   `Documentation/operations/system_requirements.rst`, "Firewall Rules"; ICMP echo, also
///   needed, is open in firewalld's default zone);
/// - flannel's VXLAN backend: UDP 8472, the kernel's default VXLAN port (flannel-io/flannel
///   `Documentation/backends.md`);
/// - Weave Net: TCP 6783 and UDP 6783/6784, "Weave's control and data ports"
///   (weaveworks/weave `site/faq.md`).
pub const NETWORK_ADD_ONS: &[(&str, &[Port])] = &[
    (
        "calico",
        &[port("179", "tcp", "Calico BGP"), port("4789", "udp", "Calico VXLAN"), port("5473", "tcp", "Calico Typha")],
    ),
    (
        "cilium",
        &[
            port("8472", "udp", "Cilium VXLAN"),
            port("4240", "tcp", "Cilium health checks"),
            port("4244", "tcp", "Hubble server"),
        ],
    ),
    ("flannel", &[port("8472", "udp", "flannel VXLAN")]),
    ("weave", &[port("6783", "tcp", "Weave Net control"), port("6783-6784", "udp", "Weave Net data")]),
];

/// The ports a node of `role` needs open in `def`: its role's, then the network add-on's,
/// without duplicates, in that order. A network hook of the definition's own adds none
/// (see [`add_on_ports_known`]).
pub fn node_ports(def: &ClusterDefinition, role: Role) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::new();
    let role_ports = if role == Role::Master { CONTROL_PLANE } else { &[] };
    let add_on = add_on_ports(def).unwrap_or(&[]);
    for p in role_ports.iter().chain(EVERY_NODE).chain(add_on) {
        if !out.iter().any(|o| o.spec() == p.spec()) {
            out.push(*p);
        }
    }
    out
}

/// Whether hakube knows the ports of `def`'s network add-on (none, or a built-in one).
pub fn add_on_ports_known(def: &ClusterDefinition) -> bool {
    add_on_ports(def).is_some()
}

fn add_on_ports(def: &ClusterDefinition) -> Option<&'static [Port]> {
    match def.hooks.network_provider.as_deref().map(HookCatalog::normalise) {
        None => Some(&[]),
        Some(provider) => NETWORK_ADD_ONS.iter().find(|(p, _)| *p == provider).map(|(_, ports)| *ports),
    }
}

/// The interfaces a network add-on asks NetworkManager not to manage, as NetworkManager's
/// `unmanaged-devices` value: Calico's, from tigera/docs
/// `calico/operations/troubleshoot/troubleshooting.mdx` ("Configure NetworkManager":
/// NetworkManager "manipulates the routing table for interfaces in the default network
/// namespace", which "can interfere with the Calico agent's ability to route correctly").
/// Cilium and flannel document none. `None` for any other add-on.
pub fn network_manager_unmanaged(def: &ClusterDefinition) -> Option<&'static str> {
    match def.hooks.network_provider.as_deref().map(HookCatalog::normalise) {
        Some("calico") => Some(
            "interface-name:cali*;interface-name:tunl*;interface-name:vxlan.calico;interface-name:vxlan-v6.calico;interface-name:wireguard.cali;interface-name:wg-v6.cali",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(network: Option<&str>) -> ClusterDefinition {
        let mut def: ClusterDefinition =
            serde_json::from_str(r#"{ "masters": [{ "nodeName": "m0", "privateIP": "10.0.0.10" }] }"#).unwrap();
        def.hooks.network_provider = network.map(str::to_string);
        def
    }

    #[test]
    fn masters_open_the_control_plane_and_workers_only_what_every_node_needs() {
        let specs =
            |def: &ClusterDefinition, role| -> Vec<String> { node_ports(def, role).iter().map(Port::spec).collect() };
        let calico = def(Some("calico"));
        let master = specs(&calico, Role::Master);
        for p in
            ["6443/tcp", "2379-2380/tcp", "10250/tcp", "10259/tcp", "10257/tcp", "10256/tcp", "179/tcp", "4789/udp"]
        {
            assert!(master.contains(&p.to_string()), "{p} in {master:?}");
        }
        assert_eq!(master.iter().filter(|p| *p == "10250/tcp").count(), 1, "no duplicates");
        let worker = specs(&calico, Role::Worker);
        assert!(!worker.contains(&"6443/tcp".to_string()) && !worker.contains(&"2379-2380/tcp".to_string()));
        assert!(worker.contains(&"30000-32767/udp".to_string()));
        // flannel's VXLAN is the kernel's 8472, not Calico's 4789 (flannel backends.md).
        assert!(specs(&def(Some("flannel.sh.j2")), Role::Worker).contains(&"8472/udp".to_string()));
        assert!(!add_on_ports_known(&def(Some("my-own-cni"))));
        assert_eq!(specs(&def(Some("my-own-cni")), Role::Worker), specs(&def(None), Role::Worker));
        assert!(add_on_ports_known(&def(None)) && add_on_ports_known(&def(Some("weave"))));
    }

    #[test]
    fn only_calico_documents_interfaces_for_network_manager() {
        assert!(network_manager_unmanaged(&def(Some("calico"))).unwrap().starts_with("interface-name:cali*;"));
        assert_eq!(network_manager_unmanaged(&def(Some("cilium"))), None);
    }
}
