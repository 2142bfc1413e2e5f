# shellcheck shell=bash
# hakube lab: the library every stand-in sources (/usr/local/lib/hakube-lab/standin-lib.sh).
# Stand-ins exist only in the lab's node image (hakube-lab, crates/lab/standins/); they are
# never shipped to a real machine.
#
# Call record, one line per event, appended to /var/log/hakube-lab/calls.log of the node:
#   <unix time s.ns> <pid> start <name> <argument>...   (each argument as bash's printf %q)
#   <unix time s.ns> <pid> end <name> <exit code>
# Only the command line is recorded: nothing read from standard input or from files.
#
# State (per node, in its overlay):   /var/lib/hakube-lab/{packages,systemd,sysctl}
# State of "the cluster", shared by every node of one lab (what the API server and etcd
# would hold): /var/lib/hakube-lab/cluster/{initialized,nodes/,labels,objects,tokens,etcd/}

readonly LAB_LOG=/var/log/hakube-lab/calls.log
readonly LAB_STATE=/var/lib/hakube-lab
readonly LAB_CLUSTER=/var/lib/hakube-lab/cluster
readonly LAB_NAME=${0##*/}
# The Kubernetes version a stand-in reports when its package was not installed with a version.
LAB_DEFAULT_VERSION=1.36.4
if [[ -r /etc/hakube-lab/kubernetes-version ]]; then
  LAB_DEFAULT_VERSION=$(</etc/hakube-lab/kubernetes-version)
fi
LAB_DEFAULT_VERSION=${HAKUBE_LAB_KUBERNETES_VERSION:-$LAB_DEFAULT_VERSION}
LAB_DEFAULT_VERSION=${LAB_DEFAULT_VERSION#v}

# lab_start ARGS...: records the start of this call and arranges for its end to be recorded.
lab_start() {
  local line arg quoted now
  now=$(date +%s.%N)
  printf -v line '%s %s start %s' "$now" "$$" "$LAB_NAME"
  for arg in "$@"; do
    printf -v quoted '%q' "$arg"
    line+=" $quoted"
  done
  printf '%s\n' "$line" >>"$LAB_LOG"
  trap 'lab_end $?' EXIT
}

lab_end() {
  local now
  now=$(date +%s.%N)
  printf '%s %s end %s %s\n' "$now" "$$" "$LAB_NAME" "$1" >>"$LAB_LOG"
}

# lab_note TEXT: a remark on standard error, marked as the lab's.
lab_note() { printf 'hakube-lab stand-in %s: %s\n' "$LAB_NAME" "$*" >&2; }

# lab_unhandled ARGS...: a call this stand-in has no behaviour for: recorded, succeeds.
lab_unhandled() { lab_note "no behaviour for '$*'; recorded, exit 0"; }

# lab_node_name: this node's name (the lab sets the hostname of each node's UTS namespace).
lab_node_name() { hostname; }

# lab_locked COMMAND...: runs COMMAND holding the lock of the shared cluster state.
lab_locked() {
  mkdir -p "$LAB_CLUSTER"
  (
    flock 8
    "$@"
  ) 8>>"$LAB_CLUSTER/.lock"
}

# --- packages ------------------------------------------------------------------------------

# lab_package_version NAME: the installed version of package NAME; fails when not installed.
lab_package_version() {
  [[ -f $LAB_STATE/packages/$1 ]] && printf '%s\n' "$(<"$LAB_STATE/packages/$1")"
}

# lab_kube_version PACKAGE: the Kubernetes version (no v) that PACKAGE's command reports: the
# installed package's upstream version, else the lab's default.
lab_kube_version() {
  local version
  if version=$(lab_package_version "$1"); then
    printf '%s\n' "${version%%-*}"
  else
    printf '%s\n' "$LAB_DEFAULT_VERSION"
  fi
}

# lab_kube_minor: the Kubernetes minor (1.NN) of the package repository apt or dnf is set up
# with (a pkgs.k8s.io-style URL ending in /v1.NN/deb or /v1.NN/rpm); fails when there is none.
lab_kube_minor() {
  local file line
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources /etc/yum.repos.d/*.repo; do
    [[ -f $file ]] || continue
    while IFS= read -r line; do
      if [[ $line =~ /v(1\.[0-9]+)/(deb|rpm)/? ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
        return 0
      fi
    done <"$file"
  done
  return 1
}

# lab_is_kube_package NAME: whether NAME comes from the Kubernetes package repository.
lab_is_kube_package() {
  case $1 in
    kubelet | kubeadm | kubectl | cri-tools | kubernetes-cni) return 0 ;;
    *) return 1 ;;
  esac
}

# lab_available_versions NAME: the versions of NAME the configured repositories offer, newest
# first: for the Kubernetes packages, every patch 0..20 of the repository's minor (revision
# -1.1, as pkgs.k8s.io names them); for any other package one version.
lab_available_versions() {
  local minor patch
  if lab_is_kube_package "$1"; then
    minor=$(lab_kube_minor) || return 0
    for ((patch = 20; patch >= 0; patch--)); do
      printf '%s.%s-1.1\n' "$minor" "$patch"
    done
  else
    case $1 in
      containerd) echo '2.1.4~ds1-1' ;;
      containerd.io) echo '2.1.4-1' ;;
      etcd-server | etcd-client | etcd) echo '3.5.16-4' ;;
      *) echo '1.0-hakube-lab' ;;
    esac
  fi
}

# lab_package_install NAME [VERSION]: marks NAME installed (newest version unless VERSION), with
# what its real package would bring along: a unit file, enabled and started as Debian's
# maintainer scripts do (unless masked). Fails (as apt does) for a version the repositories lack.
lab_package_install() {
  local name=$1 version=${2:-} available unit='' start=false
  available=$(lab_available_versions "$name")
  if [[ -z $available ]]; then
    printf 'E: Unable to locate package %s\n' "$name" >&2
    return 100
  fi
  if [[ -z $version ]]; then
    version=$(head -n 1 <<<"$available")
  elif ! grep -qxF -- "$version" <<<"$available"; then
    printf "E: Version '%s' for '%s' was not found\n" "$version" "$name" >&2
    return 100
  fi
  mkdir -p "$LAB_STATE/packages"
  printf '%s\n' "$version" >"$LAB_STATE/packages/$name"
  case $name in
    containerd | containerd.io) unit=containerd.service start=true ;;
    etcd-server | etcd) unit=etcd.service start=true ;;
    kubelet) unit=kubelet.service ;;
  esac
  if [[ -n $unit ]]; then
    mkdir -p /lib/systemd/system
    if [[ ! -f /lib/systemd/system/$unit ]]; then
      printf '# hakube-lab stand-in: the unit of package %s (the lab never runs it)\n' "$name" >"/lib/systemd/system/$unit"
    fi
    if ! lab_unit_is "$unit" masked; then
      lab_unit_set "$unit" enabled
      if [[ $start == true ]]; then
        lab_unit_start "$unit"
      fi
    fi
  fi
}

# --- systemd -------------------------------------------------------------------------------

# lab_unit NAME: NAME with .service appended when it has no unit type.
lab_unit() {
  case $1 in
    *.service | *.socket | *.target | *.timer | *.mount | *.swap | *.path | *.slice | *.scope) printf '%s\n' "$1" ;;
    *) printf '%s.service\n' "$1" ;;
  esac
}

# lab_unit_exists UNIT: whether UNIT has a unit file.
lab_unit_exists() {
  local dir
  for dir in /etc/systemd/system /run/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
    [[ -e $dir/$1 ]] && return 0
  done
  return 1
}

# lab_unit_is UNIT enabled|active|masked
lab_unit_is() { [[ -f $LAB_STATE/systemd/$1.$2 ]]; }

# lab_unit_set UNIT enabled|active|masked
lab_unit_set() {
  mkdir -p "$LAB_STATE/systemd"
  : >"$LAB_STATE/systemd/$1.$2"
}

# lab_unit_clear UNIT enabled|active|masked
lab_unit_clear() { rm -f "$LAB_STATE/systemd/$1.$2"; }

# lab_unit_start UNIT: UNIT is active. For hakube-etcd.service, this node's etcd member also
# runs in the shared cluster, if etcd admits it (lab_etcd_admitted).
lab_unit_start() {
  lab_unit_set "$1" active
  if [[ $1 == hakube-etcd.service ]] && lab_etcd_admitted "$(lab_node_name)"; then
    mkdir -p "$LAB_CLUSTER/etcd"
    : >"$LAB_CLUSTER/etcd/$(lab_node_name)"
  fi
}

# lab_unit_stop UNIT
lab_unit_stop() {
  lab_unit_clear "$1" active
  if [[ $1 == hakube-etcd.service ]]; then
    rm -f "$LAB_CLUSTER/etcd/$(lab_node_name)"
  fi
}

# --- the cluster ---------------------------------------------------------------------------

# lab_register_node NAME ROLE: the Node object NAME exists (kubeadm init/join registered it).
lab_register_node() {
  mkdir -p "$LAB_CLUSTER/nodes"
  printf '%s\n' "$2" >"$LAB_CLUSTER/nodes/$1"
}

# lab_node_registered NAME
lab_node_registered() { [[ -f $LAB_CLUSTER/nodes/$1 ]]; }

# lab_token_add ID EXPIRY: bootstrap token ID exists until EXPIRY (unix seconds, or never).
# Only the public token id is kept, never the secret.
lab_token_add() {
  mkdir -p "$LAB_CLUSTER"
  touch "$LAB_CLUSTER/tokens"
  lab_locked lab__token_replace "$1" "$2"
}
lab__token_replace() {
  local rest
  rest=$(grep -v "^$1 " "$LAB_CLUSTER/tokens" || true)
  { [[ -z $rest ]] || printf '%s\n' "$rest"; printf '%s %s\n' "$1" "$2"; } >"$LAB_CLUSTER/tokens"
}

# lab_token_delete ID
lab_token_delete() {
  touch "$LAB_CLUSTER/tokens"
  lab_locked lab__token_replace_without "$1"
}
lab__token_replace_without() {
  local rest
  rest=$(grep -v "^$1 " "$LAB_CLUSTER/tokens" || true)
  if [[ -z $rest ]]; then : >"$LAB_CLUSTER/tokens"; else printf '%s\n' "$rest" >"$LAB_CLUSTER/tokens"; fi
}

# lab_token_expiry ID: the expiry of token ID (unix seconds or never); fails when it does not
# exist or has expired.
lab_token_expiry() {
  local id expiry
  [[ -f $LAB_CLUSTER/tokens ]] || return 1
  while read -r id expiry; do
    if [[ $id == "$1" ]]; then
      if [[ $expiry == never ]] || ((expiry > EPOCHSECONDS)); then
        printf '%s\n' "$expiry"
        return 0
      fi
      return 1
    fi
  done <"$LAB_CLUSTER/tokens"
  return 1
}

# lab_duration_seconds DURATION: a Go duration (24h, 1h30m, 90s, 0) in seconds.
lab_duration_seconds() {
  local rest=$1 total=0
  [[ $rest == 0 ]] && { echo 0; return 0; }
  while [[ $rest =~ ^([0-9]+)(h|m|s)(.*)$ ]]; do
    case ${BASH_REMATCH[2]} in
      h) total=$((total + BASH_REMATCH[1] * 3600)) ;;
      m) total=$((total + BASH_REMATCH[1] * 60)) ;;
      s) total=$((total + BASH_REMATCH[1])) ;;
    esac
    rest=${BASH_REMATCH[3]}
  done
  [[ -z $rest ]] || return 1
  echo "$total"
}

# lab_object_add KIND NAMESPACE NAME: the object exists (NAMESPACE - for cluster-scoped kinds).
lab_object_add() {
  mkdir -p "$LAB_CLUSTER"
  touch "$LAB_CLUSTER/objects"
  lab_locked lab__object_add "$@"
}
lab__object_add() {
  grep -qxF -- "$1 $2 $3" "$LAB_CLUSTER/objects" || printf '%s %s %s\n' "$1" "$2" "$3" >>"$LAB_CLUSTER/objects"
}

# lab_object_find KIND NAMESPACE NAME: prints the stored "KIND NAMESPACE NAME" line when the
# object exists (a cluster-scoped object matches any NAMESPACE); fails otherwise.
lab_object_find() {
  local kind ns name
  [[ -f $LAB_CLUSTER/objects ]] || return 1
  while read -r kind ns name; do
    if [[ $kind == "$1" && $name == "$3" && ($ns == "$2" || $ns == -) ]]; then
      printf '%s %s %s\n' "$kind" "$ns" "$name"
      return 0
    fi
  done <"$LAB_CLUSTER/objects"
  return 1
}

# lab_object_delete KIND NAMESPACE NAME
lab_object_delete() {
  [[ -f $LAB_CLUSTER/objects ]] || return 0
  lab_locked lab__object_delete "$@"
}
lab__object_delete() {
  local kind ns name out=''
  while read -r kind ns name; do
    if [[ $kind == "$1" && $name == "$3" && ($ns == "$2" || $ns == -) ]]; then
      continue
    fi
    out+="$kind $ns $name"$'\n'
  done <"$LAB_CLUSTER/objects"
  printf '%s' "$out" >"$LAB_CLUSTER/objects"
}

# lab_cluster_scoped KIND: whether objects of KIND (lowercase, singular) have no namespace.
lab_cluster_scoped() {
  case $1 in
    node | namespace | customresourcedefinition | clusterrole | clusterrolebinding | \
      storageclass | priorityclass | persistentvolume | apiservice | \
      mutatingwebhookconfiguration | validatingwebhookconfiguration | installation | apiserver | \
      ippool | felixconfiguration | bgpconfiguration | imageset | tigerastatus) return 0 ;;
    *) return 1 ;;
  esac
}

# --- etcd (the external topology's members, as seen through https://127.0.0.1:2379) ---------

readonly LAB_ETCD_UNIT_FILE=/etc/systemd/system/hakube-etcd.service

# lab_etcd_initial_cluster: "NAME PEER_URL" of each member of the initial cluster in this
# master's hakube-etcd unit.
lab_etcd_initial_cluster() {
  local line list='' entry
  [[ -f $LAB_ETCD_UNIT_FILE ]] || return 0
  while IFS= read -r line; do
    if [[ $line =~ --initial-cluster=([^[:space:]\\]+) ]]; then
      list=${BASH_REMATCH[1]}
    fi
  done <"$LAB_ETCD_UNIT_FILE"
  [[ -n $list ]] || return 0
  IFS=, read -r -a list <<<"$list"
  for entry in "${list[@]}"; do
    printf '%s %s\n' "${entry%%=*}" "${entry#*=}"
  done
}

# lab_etcd_members: the members of the cluster: the initial cluster minus those removed since
# (and not added back).
lab_etcd_members() {
  local name url
  while read -r name url; do
    [[ -f $LAB_CLUSTER/etcd-removed/$name ]] || printf '%s %s\n' "$name" "$url"
  done < <(lab_etcd_initial_cluster)
}

# lab_etcd_admitted NAME: whether the cluster lets member NAME (re)start: it was never removed,
# or was added back (member add) and starts with --initial-cluster-state=existing, as etcd
# requires of a member joining a running cluster.
lab_etcd_admitted() {
  [[ ! -f $LAB_CLUSTER/etcd-removed/$1 ]] || return 1
  if [[ -f $LAB_CLUSTER/etcd-added/$1 ]]; then
    [[ $(lab_etcd_initial_state) == existing ]] || return 1
  fi
}

# lab_etcd_initial_state: the --initial-cluster-state the hakube-etcd unit starts etcd with,
# resolved as systemd would: a literal value, or ${ETCD_INITIAL_CLUSTER_STATE} from the unit's
# Environment= default and its EnvironmentFile= (which wins).
lab_etcd_initial_state() {
  local line value='' env_file=''
  while IFS= read -r line; do
    case $line in
      *--initial-cluster-state=*) value=${line##*--initial-cluster-state=} value=${value%% *} ;;
    esac
  done <"$LAB_ETCD_UNIT_FILE"
  # shellcheck disable=SC2016 # the unit's literal text, not an expansion
  if [[ $value == '${ETCD_INITIAL_CLUSTER_STATE}' ]]; then
    value=$(sed -n 's/^Environment=ETCD_INITIAL_CLUSTER_STATE=//p' "$LAB_ETCD_UNIT_FILE")
    env_file=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$LAB_ETCD_UNIT_FILE")
    if [[ -n $env_file && -f $env_file ]]; then
      value=$(sed -n 's/^ETCD_INITIAL_CLUSTER_STATE=//p' "$env_file" | tail -n 1)
    fi
  fi
  printf '%s\n' "$value"
}

# lab_etcd_id NAME: a member id derived from the member's name (decimal, as etcd's JSON shows).
lab_etcd_id() {
  local sum
  read -r sum _ < <(printf '%s' "$1" | cksum)
  printf '%s\n' "$((sum * 4099 + 17))"
}

# lab_etcd_running NAME: whether etcd member NAME runs (its unit started and etcd admitted it).
lab_etcd_running() { [[ -f $LAB_CLUSTER/etcd/$1 ]]; }

# lab_etcd_member_at HOST: the member whose peer URL has HOST, or this master's member for
# 127.0.0.1 and localhost; fails when no member has that address.
lab_etcd_member_at() {
  local name url
  if [[ $1 == 127.0.0.1 || $1 == localhost ]]; then
    lab_node_name
    return 0
  fi
  while read -r name url; do
    if [[ $url == "https://$1:2380" || $url == "http://$1:2380" ]]; then
      printf '%s\n' "$name"
      return 0
    fi
  done < <(lab_etcd_initial_cluster)
  return 1
}

# lab_etcd_healthy [NAME]: whether member NAME (default: this master's) runs and a quorum of
# the members runs.
lab_etcd_healthy() {
  local name _ total=0 running=0
  lab_etcd_running "${1:-$(lab_node_name)}" || return 1
  while read -r name _; do
    total=$((total + 1))
    if lab_etcd_running "$name"; then running=$((running + 1)); fi
  done < <(lab_etcd_members)
  ((total > 0 && running * 2 > total))
}

# lab_etcd_member_list_json: the members, as etcd's JSON gateway lists them.
lab_etcd_member_list_json() {
  local name url out='' sep=''
  while read -r name url; do
    out+="$sep{\"ID\":\"$(lab_etcd_id "$name")\",\"name\":\"$name\",\"peerURLs\":[\"$url\"],\"clientURLs\":[\"${url%:2380}:2379\"]}"
    sep=,
  done < <(lab_etcd_members)
  printf '{"header":{"cluster_id":"1","member_id":"1","raft_term":"2"},"members":[%s]}\n' "$out"
}

# lab_etcd_add PEER_URL: adds back the removed member whose peer URL is PEER_URL (etcd's member
# add); fails when no member of the initial cluster has that URL.
lab_etcd_add() {
  local name url
  while read -r name url; do
    if [[ $url == "$1" ]]; then
      mkdir -p "$LAB_CLUSTER/etcd-added"
      rm -f "$LAB_CLUSTER/etcd-removed/$name"
      : >"$LAB_CLUSTER/etcd-added/$name"
      printf '%s\n' "$name"
      return 0
    fi
  done < <(lab_etcd_initial_cluster)
  return 1
}

# lab_etcd_remove ID: removes the member with id ID; fails when there is none.
lab_etcd_remove() {
  local name _
  while read -r name _; do
    if [[ $(lab_etcd_id "$name") == "$1" ]]; then
      mkdir -p "$LAB_CLUSTER/etcd-removed"
      : >"$LAB_CLUSTER/etcd-removed/$name"
      rm -f "$LAB_CLUSTER/etcd/$name"
      return 0
    fi
  done < <(lab_etcd_members)
  return 1
}

# --- what URLs would have served -------------------------------------------------------------

# lab_url_content URL: the dummy content the lab serves for URL (nothing is ever downloaded).
lab_url_content() {
  local url=$1 archive
  case $url in
    */Release.key | */repomd.xml.key | *.gpg | *.asc | */gpg)
      printf '%s\n' '-----BEGIN PGP PUBLIC KEY BLOCK-----' '' 'aGFrdWJlLWxhYiBkdW1teSBrZXk=' '-----END PGP PUBLIC KEY BLOCK-----'
      ;;
    */tigera-operator.yaml)
      printf '%s\n' '# hakube-lab: dummy stand-in for the Tigera operator manifest' \
        'apiVersion: v1' 'kind: Namespace' 'metadata:' '  name: tigera-operator' '---' \
        'apiVersion: apiextensions.k8s.io/v1' 'kind: CustomResourceDefinition' 'metadata:' '  name: installations.operator.tigera.io' '---' \
        'apiVersion: apiextensions.k8s.io/v1' 'kind: CustomResourceDefinition' 'metadata:' '  name: apiservers.operator.tigera.io' '---' \
        'apiVersion: apps/v1' 'kind: Deployment' 'metadata:' '  name: tigera-operator' '  namespace: tigera-operator'
      ;;
    */kube-flannel.yml)
      printf '%s\n' '# hakube-lab: dummy stand-in for the flannel manifest' \
        'apiVersion: v1' 'kind: Namespace' 'metadata:' '  name: kube-flannel' '---' \
        'apiVersion: v1' 'kind: ConfigMap' 'metadata:' '  name: kube-flannel-cfg' '  namespace: kube-flannel' 'data:' \
        '  net-conf.json: |' '    {' '      "Network": "10.244.0.0/16",' '      "Backend": { "Type": "vxlan" }' '    }' '---' \
        'apiVersion: apps/v1' 'kind: DaemonSet' 'metadata:' '  name: kube-flannel-ds' '  namespace: kube-flannel'
      ;;
    */weave-daemonset-k8s.yaml)
      printf '%s\n' '# hakube-lab: dummy stand-in for the Weave Net manifest' \
        'apiVersion: apps/v1' 'kind: DaemonSet' 'metadata:' '  name: weave-net' '  namespace: kube-system'
      ;;
    */cilium-linux-*.tar.gz)
      lab_cilium_archive
      ;;
    */cilium-linux-*.tar.gz.sha256sum)
      archive=${url##*/}
      archive=${archive%.sha256sum}
      printf '%s  %s\n' "$(lab_cilium_archive | sha256sum | cut -d' ' -f1)" "$archive"
      ;;
    *)
      printf '# hakube-lab: dummy content for %s (the lab downloads nothing)\n' "$url"
      ;;
  esac
}

# lab_cilium_archive: a gzip'd tar holding the cilium CLI stand-in, byte for byte the same on
# every call (so its .sha256sum matches).
lab_cilium_archive() {
  tar -C /usr/local/lib/hakube-lab/archive --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - cilium | gzip -n
}

# lab_manifest_objects NAMESPACE: reads YAML documents on standard input and prints
# "KIND NAMESPACE NAME" for each object (KIND lowercase; NAMESPACE - for cluster-scoped kinds,
# else metadata.namespace or NAMESPACE). For a bootstrap token Secret it also records the
# token id and expiration (never the secret).
lab_manifest_objects() {
  local default_ns=$1 kind ns name
  while read -r kind ns name; do
    if lab_cluster_scoped "$kind"; then
      ns=-
    elif [[ $ns == '?' ]]; then
      ns=$default_ns
    fi
    printf '%s %s %s\n' "$kind" "$ns" "$name"
  done < <(awk '
    function value(line) { sub(/^[^:]*:[[:space:]]*/, "", line); gsub(/["\047]/, "", line); sub(/[[:space:]]+#.*$/, "", line); return line }
    function flush() {
      if (kind != "" && name != "") print tolower(kind), (ns == "" ? "?" : ns), name
      if (tolower(kind) == "secret" && type == "bootstrap.kubernetes.io/token" && tokenid != "") print "hakube-lab-token", (expiration == "" ? "never" : expiration), tokenid
      kind = ""; name = ""; ns = ""; meta = 0; type = ""; tokenid = ""; expiration = ""
    }
    /^---/ { flush(); next }
    /^kind:/ { kind = value($0) }
    /^type:/ { type = value($0) }
    /^[[:space:]]+token-id:/ { tokenid = value($0) }
    /^[[:space:]]+expiration:/ { expiration = value($0) }
    /^metadata:/ { meta = 1; next }
    /^[^[:space:]#]/ { meta = 0 }
    meta && /^  name:/ && name == "" { name = value($0) }
    meta && /^  namespace:/ { ns = value($0) }
    END { flush() }
  ')
}
