#!/usr/bin/env bash
# Installs hakube's SSH keys on a Vagrant machine (run as root by Vagrant's shell
# provisioner):
#   install-keys.sh prepare USER DIR   create DIR (mode 0700, owned by USER) for the uploads
#   install-keys.sh install USER DIR   DIR/login.pub -> USER's authorized_keys;
#                                      DIR/ssh_host_ed25519_key{,.pub} -> sshd's ed25519
#                                      host key (the one `hakube render` generated and
#                                      wrote into known_hosts); restart sshd; remove DIR
# Keys arrive as files, never as arguments. Running it again changes nothing.
set -euo pipefail

die() {
    printf 'install-keys.sh: %s\n' "$*" >&2
    exit 1
}

(($# == 3)) || die "usage: install-keys.sh prepare|install USER DIR"
action=$1 user=$2 dir=$3
[[ $user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "not a user name: $user"
[[ $dir == /* ]] || die "not an absolute path: $dir"
home=$(getent passwd "$user" | cut -d: -f6) || die "no such user: $user"
group=$(id -gn "$user")

case $action in
prepare)
    rm -rf -- "$dir"
    install -d -m 0700 -o "$user" -g "$group" -- "$dir"
    ;;
install)
    for f in login.pub ssh_host_ed25519_key ssh_host_ed25519_key.pub; do
        [[ -s $dir/$f ]] || die "missing $dir/$f (the file provisioner should have uploaded it)"
    done

    login_key=$(<"$dir/login.pub")
    [[ $login_key =~ ^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521))\ [A-Za-z0-9+/=]+(\ [^[:cntrl:]]*)?$ ]] ||
        die "$dir/login.pub is not one OpenSSH public key line"
    install -d -m 0700 -o "$user" -g "$group" -- "$home/.ssh"
    authorized="$home/.ssh/authorized_keys"
    touch -- "$authorized"
    if ! grep -qxF -- "$login_key" "$authorized"; then
        printf '%s\n' "$login_key" >>"$authorized"
    fi
    chown "$user:$group" -- "$authorized"
    chmod 0600 -- "$authorized"

    # Check the pair before sshd depends on it: the public half must derive from the private.
    derived=$(ssh-keygen -y -f "$dir/ssh_host_ed25519_key") || die "unreadable host key $dir/ssh_host_ed25519_key"
    read -r want_type want_key _ <"$dir/ssh_host_ed25519_key.pub"
    [[ $derived == "$want_type $want_key"* && $want_type == ssh-ed25519 ]] ||
        die "$dir/ssh_host_ed25519_key.pub does not match the private key"
    install -m 0600 -o root -g root -- "$dir/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
    install -m 0644 -o root -g root -- "$dir/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
    rm -rf -- "$dir"

    # Ubuntu and Debian call the unit ssh, most others sshd.
    if systemctl cat ssh.service >/dev/null 2>&1; then
        systemctl restart ssh.service
    else
        systemctl restart sshd.service
    fi
    printf 'install-keys.sh: login key for %s and host key %s installed\n' "$user" "$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"
    ;;
*)
    die "unknown action: $action (prepare or install)"
    ;;
esac
