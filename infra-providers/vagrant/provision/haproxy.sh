#!/usr/bin/env bash
# Turns the lb VM into the control-plane load balancer (run as root by Vagrant's shell
# provisioner): HAProxy forwards TCP 6443 to every master's API server and takes a
# master out of rotation while GET /readyz on it does not answer 200.
#   haproxy.sh NAME=IP...     one argument per master, e.g. master0=192.168.56.10
# Running it again rewrites the configuration and reloads HAProxy.
set -euo pipefail

die() {
    printf 'haproxy.sh: %s\n' "$*" >&2
    exit 1
}

(($# > 0)) || die "usage: haproxy.sh NAME=IP..."
servers=""
for arg in "$@"; do
    name=${arg%%=*} ip=${arg#*=}
    [[ $name =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "not a node name: $name"
    [[ $ip =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "not an IPv4 address: $ip"
    servers+="    server ${name} ${ip}:6443"$'\n'
done

if ! command -v haproxy >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q haproxy
fi

config=$(mktemp)
trap 'rm -f -- "$config"' EXIT
cat >"$config" <<CONFIG
# Written by hakube's infra-providers/vagrant/provision/haproxy.sh.
global
    log /dev/log local0
    maxconn 4096

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    # kubectl logs -f and watches hold connections open for a long time.
    timeout client 1h
    timeout server 1h

frontend kube-apiserver
    bind :6443
    default_backend kube-masters

backend kube-masters
    balance roundrobin
    # /readyz is readable without credentials (system:public-info-viewer). The check
    # proves the API server is serving; it does not authenticate it, so verify none.
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server check check-ssl verify none inter 5s fall 3 rise 2
${servers}
CONFIG

haproxy -c -q -f "$config" || die "the generated configuration is invalid"
install -m 0644 -- "$config" /etc/haproxy/haproxy.cfg
systemctl enable haproxy.service
systemctl reload-or-restart haproxy.service
printf 'haproxy.sh: forwarding :6443 to %d master(s)\n' "$#"
