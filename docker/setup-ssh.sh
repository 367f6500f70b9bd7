#!/bin/sh
# Configure OpenSSH for MPI between the job's hosts (run once, as root, at image build).
#
#   SSH_HOSTS="algo-*" SSH_CLUSTER_KEY=generate sh docker/setup-ssh.sh
#
# - sshd: the settings in sshd_config.conf (next to this script) go to
#   /etc/ssh/sshd_config.d/smtk.conf: port 22, public keys only, no forwarding.
# - host keys: made here (ssh-keygen -A), so every container of the image has the same ones;
#   they are written to /etc/ssh/ssh_known_hosts for the SSH_HOSTS patterns and the client
#   checks them strictly (StrictHostKeyChecking yes) for those hosts only.
# - cluster key (SSH_CLUSTER_KEY=generate): one ed25519 key pair in /root/.ssh, authorized for
#   root; with "none", /root/.ssh/id_ed25519 and authorized_keys must come from elsewhere.
# - PAM: pam_loginuid cannot set the audit login id inside a container, and as "required" it
#   would drop every session, so it is made optional.
set -eu

here=$(dirname "$0")
SSH_HOSTS=${SSH_HOSTS:-algo-*}
SSH_CLUSTER_KEY=${SSH_CLUSTER_KEY:-generate}

install -m 0644 "$here/sshd_config.conf" /etc/ssh/sshd_config.d/smtk.conf
mkdir -p /run/sshd
install -d -m 0700 /root/.ssh
sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' /etc/pam.d/sshd
ssh-keygen -A

host_keys=$(echo /etc/ssh/ssh_host_*_key.pub)
set -f  # SSH_HOSTS holds patterns: split on spaces, never glob them
: >/etc/ssh/ssh_known_hosts
for pattern in $SSH_HOSTS; do
    for pub in $host_keys; do
        printf '%s %s\n' "$pattern" "$(cut -d' ' -f1,2 "$pub")" >>/etc/ssh/ssh_known_hosts
    done
done
{
    for pattern in $SSH_HOSTS; do
        printf 'Host %s\n' "$pattern"
    done
    printf '    %s\n' 'BatchMode yes' 'StrictHostKeyChecking yes' 'UserKnownHostsFile /dev/null' \
        'GlobalKnownHostsFile /etc/ssh/ssh_known_hosts' 'IdentityFile ~/.ssh/id_ed25519' \
        'ConnectTimeout 10' 'ServerAliveInterval 30' 'LogLevel ERROR'
} >/etc/ssh/ssh_config.d/smtk.conf
set +f

case "$SSH_CLUSTER_KEY" in
    generate)
        ssh-keygen -q -t ed25519 -N '' -C smtk-cluster -f /root/.ssh/id_ed25519
        install -m 0600 /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys
        ;;
    none) ;;
    *)
        echo "SSH_CLUSTER_KEY must be 'generate' or 'none', got '$SSH_CLUSTER_KEY'" >&2
        exit 1
        ;;
esac
