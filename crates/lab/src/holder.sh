#!/bin/bash
# hakube lab: builds one node's root file system inside the node's own mount namespace, then
# becomes the node's holder process (`sleep infinity`, chrooted into that root), which keeps
# the node's namespaces alive. hakube-lab runs it as
#   nsenter --net=/run/netns/NETNS -- unshare --mount --uts --propagation private -- \
#     bash holder.sh NODE_DIR NODE_NAME CLUSTER_DIR [SUDO_USER]
# and waits until this process has become `sleep`. Everything mounted here exists only in
# the node's mount namespace: when the node's last process ends, every mount goes with it.
set -euo pipefail
node_dir=$1 name=$2 cluster=$3 sudo_user=${4:-}
root=$node_dir/root
layers=$node_dir/layers

hostname "$name"
mkdir -p "$root" "$layers"

# overlay: the node's root: the test machine's / as the read-only lower layer, the node's
# image (stand-ins, sshd configuration, host key) copied into the upper layer, which receives
# every write made on the node.
overlay() {
  mkdir -p "$layers/upper" "$layers/work"
  cp -a "$node_dir/image/." "$layers/upper/"
  mount -t overlay "hakube-lab-$name" -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$root"
}
if ! overlay 2>"$node_dir/overlay-error.log"; then
  # An upper layer on overlayfs (a container's root file system) is refused: keep the layers
  # on a tmpfs of this mount namespace instead.
  mount -t tmpfs -o mode=0755 "hakube-lab-$name-layers" "$layers"
  overlay
fi

mount -t proc proc "$root/proc"
# Kernel settings are the test machine's: read-only on the node (the sysctl stand-in keeps its
# own values).
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
# sysfs mounted in the node's network namespace shows the node's own network devices.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755,nosuid,nodev "hakube-lab-$name-run" "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev "hakube-lab-$name-tmp" "$root/tmp"
mkdir -p "$root/var/lib/hakube-lab/cluster"
mount --bind "$cluster" "$root/var/lib/hakube-lab/cluster"
install -d -m 0755 "$root/run/sshd"

if [[ -n $sudo_user ]] && ! chroot "$root" id -u "$sudo_user" >/dev/null 2>&1; then
  chroot "$root" useradd --create-home --shell /bin/bash "$sudo_user"
  # '*': no password, and not a locked account (sshd refuses locked accounts).
  chroot "$root" usermod --password '*' "$sudo_user"
fi

exec chroot "$root" /bin/sleep infinity
