# shellcheck shell=bash
# hakube lab: the library every stand-in sources (/usr/local/lib/hakube-lab/standin-lib.sh).
# Stand-ins exist only in the lab's node images (hakube-lab, crates/lab/standins/); they are
# never shipped to a real machine. A lab node is a real Debian machine (systemd, apt, dpkg,
# containerd, etcd, curl, sudo, sshd are the real programs); only what such a container cannot
# run is a stand-in: kubeadm, kubelet and kubectl (and the API server they talk to), modprobe
# (kernel modules) and the cilium CLI (container images).
#
# Call record, one line per event, appended to /var/log/hakube-lab/calls.log of the node:
#   <unix time s.ns> <pid> start <name> <argument>...   (each argument as bash's printf %q)
#   <unix time s.ns> <pid> end <name> <exit code>
# Only the command line is recorded: nothing read from standard input or from files.
#
# State of "the cluster", shared by every node of one lab (what the API server and etcd would
# hold; /var/lib/hakube-lab/cluster is bind-mounted into each node):
#   initialized           kubeadm init got as far as a running control plane
#   nodes/<name>          Node objects (content: control-plane or worker)
#   labels                "<node> <key>=<value>" lines, later lines win
#   objects               "<kind> <namespace|-> <name>" of applied objects
#   tokens                "<token id> <expiry unix s|never>" (token ids only, never secrets)
#   kubeadm-config.yaml   the ClusterConfiguration kubeadm init uploaded (no secrets in it)
#   etcd-learner.lock     held by a stacked control-plane join while its etcd learner syncs
#   kubernetes-version    the cluster's version (v1.36.4): set by kubeadm init, changed by a
#                         successful kubeadm upgrade apply
#   kubelets/<node>       "<version> Ready|NotReady": the Node's status.nodeInfo.kubeletVersion
#                         and Ready condition, as the kubelet reports them (lab__kubelet_status)
#   cordoned/<node>       exists while the Node is cordoned: spec.unschedulable true (kubectl
#                         cordon, drain; uncordon removes it)
#   etcd-members          "<node> <address>" of each stacked etcd member (kubeadm init and a
#                         stacked control-plane join add one, kubeadm reset removes it); its
#                         client URL is https://<address>:2379
#
# Faults, per node: /etc/hakube-lab/faults (see lab_fault).

readonly LAB_LOG_DIR=/var/log/hakube-lab
readonly LAB_LOG=$LAB_LOG_DIR/calls.log
readonly LAB_CLUSTER=/var/lib/hakube-lab/cluster
readonly LAB_FAULTS=/etc/hakube-lab/faults
readonly LAB_NAME=${0##*/}
# The Kubernetes version a stand-in reports when its package is not installed (dpkg-query says
# so): /etc/hakube-lab/kubernetes-version, $HAKUBE_LAB_KUBERNETES_VERSION, else 1.36.4.
LAB_DEFAULT_VERSION=1.36.4
if [[ -r /etc/hakube-lab/kubernetes-version ]]; then
  LAB_DEFAULT_VERSION=$(</etc/hakube-lab/kubernetes-version)
fi
LAB_DEFAULT_VERSION=${HAKUBE_LAB_KUBERNETES_VERSION:-$LAB_DEFAULT_VERSION}
LAB_DEFAULT_VERSION=${LAB_DEFAULT_VERSION#v}

# lab_start ARGS...: records the start of this call and arranges for its end to be recorded.
# The log directory and file are created when missing, the file with mode 0666 so that a caller
# that is not root can append too (calls normally run as root, through sudo).
lab_start() {
  local line arg quoted now
  if [[ ! -e $LAB_LOG ]]; then
    mkdir -p "$LAB_LOG_DIR" 2>/dev/null || true
    (umask 000 && : >>"$LAB_LOG") 2>/dev/null || true
    chmod 0666 "$LAB_LOG" 2>/dev/null || true
  fi
  now=${EPOCHREALTIME/[^0-9]/.}000
  printf -v line '%s %s start %s' "$now" "$$" "$LAB_NAME"
  for arg in "$@"; do
    printf -v quoted '%q' "$arg"
    line+=" $quoted"
  done
  printf '%s\n' "$line" >>"$LAB_LOG"
  trap 'lab_end $?' EXIT
  if [[ $LAB_NAME == kubelet ]]; then lab__kubelet_status "$@" || true; fi
}

# lab_end CODE: the end line. The time is bash's EPOCHREALTIME (microseconds, padded to the
# record's nine digits), not $(date): this runs from the EXIT trap while systemd may still be
# killing each new process of the unit (systemctl stop), so it must not fork.
lab_end() {
  local now=${EPOCHREALTIME/[^0-9]/.}000
  printf '%s %s end %s %s\n' "$now" "$$" "$LAB_NAME" "$1" >>"$LAB_LOG"
  if [[ -n $LAB_KUBELET_NODE ]]; then
    printf '%s NotReady\n' "$LAB_KUBELET_VERSION" >"$LAB_CLUSTER/kubelets/$LAB_KUBELET_NODE" 2>/dev/null || true
  fi
}

# lab__kubelet_status ARGS...: what a running kubelet reports in its Node's status and kubeadm
# upgrade reads there: status.nodeInfo.kubeletVersion (phases/upgrade/versiongetter.go,
# KubeletVersions) and the Ready condition (phases/upgrade/health.go, controlPlaneNodesReady).
# For each run of the kubelet service (not `kubelet --version` or --help), lab_start writes
# kubelets/<node> as "<version of the installed kubelet package> Ready", lab_end as "... NotReady"
# once that kubelet exits (crash-looping, or stopped by systemctl): a stopped kubelet's Node turns
# NotReady, as the node lifecycle controller marks it when its heartbeats stop. <node> is
# --hostname-override, else the host name, as the kubelet names its Node.
LAB_KUBELET_NODE='' LAB_KUBELET_VERSION=''
lab__kubelet_status() {
  local arg prev='' name=''
  case ${1:-} in --version* | -h | --help) return 0 ;; esac
  for arg in "$@"; do
    case $arg in --hostname-override=*) name=${arg#*=} ;; esac
    if [[ $prev == --hostname-override ]]; then name=$arg; fi
    prev=$arg
  done
  [[ -n $name ]] || name=$(lab_node_name)
  LAB_KUBELET_VERSION=v$(lab_kube_version kubelet)
  mkdir -p "$LAB_CLUSTER/kubelets" 2>/dev/null || return 0
  LAB_KUBELET_NODE=${name,,}
  printf '%s Ready\n' "$LAB_KUBELET_VERSION" >"$LAB_CLUSTER/kubelets/$LAB_KUBELET_NODE" 2>/dev/null || true
}

# lab_kubelet_status NODE: "<version> Ready|NotReady" of NODE's kubelet; fails when no kubelet
# ever ran there (a Node without status: no version, no Ready condition).
lab_kubelet_status() {
  [[ -r $LAB_CLUSTER/kubelets/$1 ]] || return 1
  printf '%s\n' "$(<"$LAB_CLUSTER/kubelets/$1")"
}

# lab_note TEXT: a remark on standard error, marked as the lab's.
lab_note() { printf 'hakube-lab stand-in %s: %s\n' "$LAB_NAME" "$*" >&2; }

# lab_unhandled ARGS...: a call this stand-in has no behaviour for: recorded, succeeds.
lab_unhandled() { lab_note "no behaviour for '$*'; recorded, exit 0"; }

# lab_node_name: this node's host name (each node has its own UTS namespace), lowercase as the
# kubelet and kubeadm use it (nodeutil.GetHostname lowercases).
lab_node_name() {
  local name
  name=$(hostname)
  printf '%s\n' "${name,,}"
}

# lab_nap SECONDS: sleep, failing never. In the foreground: a stop of a unit (systemctl stop) sends
# SIGTERM to every process of the unit, the sleep too, and bash runs its TERM trap as soon as
# the sleep is gone (a background sleep and `wait` can miss a signal that arrives between the
# two, which left a stopped kubelet hanging until systemd's stop timeout).
lab_nap() { sleep "$1" || true; }

# lab_locked COMMAND...: runs COMMAND holding the lock of the shared cluster state.
lab_locked() {
  mkdir -p "$LAB_CLUSTER"
  (
    flock 8
    "$@"
  ) 8>>"$LAB_CLUSTER/.lock"
}

# lab_kube_version PACKAGE: the Kubernetes version (no v) PACKAGE's command reports: the upstream
# part of the installed package's version (dpkg-query -W -f='${Version}': 1.36.4-1.1 -> 1.36.4),
# as the real binary reports the version it was built as; the lab's default only when dpkg says
# PACKAGE is not installed.
lab_kube_version() {
  local version
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not a shell expansion
  if version=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null) && [[ -n $version ]]; then
    version=${version#*:}
    printf '%s\n' "${version%%-*}"
  else
    printf '%s\n' "$LAB_DEFAULT_VERSION"
  fi
}

# lab_minor VERSION: the minor number of a Kubernetes version (v1.36.4 -> 36).
lab_minor() {
  local v=${1#v}
  v=${v#*.}
  printf '%s\n' "${v%%.*}"
}

# lab_version_lt A B: whether version A (x.y.z, an optional v and -suffix ignored) is lower than
# B, compared number by number.
lab_version_lt() {
  local a=${1#v} b=${2#v} i
  local -a x y
  a=${a%%[-+]*} b=${b%%[-+]*}
  IFS=. read -r -a x <<<"$a"
  IFS=. read -r -a y <<<"$b"
  for i in 0 1 2; do
    if ((10#${x[i]:-0} != 10#${y[i]:-0})); then
      ((10#${x[i]:-0} < 10#${y[i]:-0}))
      return
    fi
  done
  return 1
}

# --- faults --------------------------------------------------------------------------------

# lab_fault NAME SUBCOMMAND PHASE: applies the lines of /etc/hakube-lab/faults (a test puts them
# there; the file may not exist) that match this point of a stand-in's run:
#   NAME[.SUBCOMMAND][@PHASE] fail [CODE] | hang | delay SECONDS
# e.g. `kubeadm.init@wait-control-plane fail 1`, `kubeadm.join hang`, `kubeadm@preflight delay 5`,
# `kubelet fail`. A line without .SUBCOMMAND matches every subcommand; a line without @PHASE
# matches only the call with PHASE empty (the start of the whole command or subcommand), a line
# with @PHASE only that phase. `delay` sleeps, `hang` sleeps forever, `fail` prints nothing and
# returns CODE (default 1) for the caller to report as the program would (lab_fault returns 0
# when no fail line matched). Lines starting with # and blank lines are ignored.
lab_fault() {
  local name=$1 sub=$2 phase=$3 target action arg _ t_name t_sub t_phase
  [[ -r $LAB_FAULTS ]] || return 0
  while read -r target action arg _; do
    [[ -n $target && $target != \#* ]] || continue
    t_phase='' t_sub=''
    if [[ $target == *@* ]]; then t_phase=${target#*@} target=${target%%@*}; fi
    t_name=${target%%.*}
    if [[ $target == *.* ]]; then t_sub=${target#*.}; fi
    [[ $t_name == "$name" ]] || continue
    [[ -z $t_sub || $t_sub == "$sub" ]] || continue
    [[ $t_phase == "$phase" ]] || continue
    case $action in
      delay) lab_nap "${arg:-1}" ;;
      hang)
        lab_note "fault '$target${t_phase:+@$t_phase} hang': hanging"
        while :; do lab_nap 3600; done
        ;;
      fail) return "${arg:-1}" ;;
      *) lab_note "ignoring fault line with unknown action '$action'" ;;
    esac
  done <"$LAB_FAULTS"
  return 0
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

# lab_node_address NODE: the address /etc/hosts gives NODE (the lab names every node there; the
# site has no DNS), not Debian's loopback line for the host name (127.0.1.1); empty when it
# names none.
lab_node_address() {
  awk -v n="$1" '$1 !~ /^(#|127\.|::1)/ { for (i = 2; i <= NF; i++) if (tolower($i) == n) { print $1; exit } }' /etc/hosts
}

# lab_etcd_member_add NODE ADDRESS: NODE's stacked etcd member, advertising https://ADDRESS:2379,
# is in the etcd cluster (replacing an earlier member of NODE).
lab_etcd_member_add() {
  mkdir -p "$LAB_CLUSTER"
  touch "$LAB_CLUSTER/etcd-members"
  lab_locked lab__etcd_member_replace "$1" "$2"
}
lab__etcd_member_replace() {
  local rest
  rest=$(awk -v n="$1" '$1 != n' "$LAB_CLUSTER/etcd-members")
  { [[ -z $rest ]] || printf '%s\n' "$rest"; [[ -z $2 ]] || printf '%s %s\n' "$1" "$2"; } >"$LAB_CLUSTER/etcd-members"
}

# lab_etcd_member_remove NODE: NODE's member left the etcd cluster.
lab_etcd_member_remove() {
  [[ -f $LAB_CLUSTER/etcd-members ]] || return 0
  lab_locked lab__etcd_member_replace "$1" ''
}

# lab_etcd_members: "<node> <address>" of each stacked etcd member, in the order they joined.
lab_etcd_members() {
  [[ ! -f $LAB_CLUSTER/etcd-members ]] || cat "$LAB_CLUSTER/etcd-members"
}

# lab_cordoned NODE: whether NODE is cordoned (spec.unschedulable).
lab_cordoned() { [[ -f $LAB_CLUSTER/cordoned/$1 ]]; }

# lab_set_cordoned NODE true|false
lab_set_cordoned() {
  if [[ $2 == true ]]; then
    mkdir -p "$LAB_CLUSTER/cordoned"
    : >"$LAB_CLUSTER/cordoned/$1"
  else
    rm -f "$LAB_CLUSTER/cordoned/$1"
  fi
}

# --- manifests kubectl apply -f URL gets ---------------------------------------------------------

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
