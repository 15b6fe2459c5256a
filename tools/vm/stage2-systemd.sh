#!/bin/bash
# Stage 2 of the rdm VM rig in a systemd guest: runs as the oneshot service
# rdm-vm.service once udev has settled. Loads the modules rdm needs, runs
# the requested command as stage2.sh does, writes its exit status to the
# control dir and powers the guest off.

CTL=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=/dev/null
. "$CTL/stage1.env"
stty -onlcr </dev/console 2>/dev/null

if ! modprobe -a ublk_drv loop dm-mod dm-zero dm-flakey dm-delay ext4; then
	echo "rdm-vm stage2: warning: some kernel modules failed to load" >&2
fi

mapfile -d '' ARGS <"$CTL/args"
mapfile -d '' ENVS <"$CTL/env"
CWD=$(cat "$CTL/cwd")

(
	cd "$CWD" || exit 127
	for v in $(compgen -e); do unset "$v"; done
	for kv in "${ENVS[@]}"; do export "${kv?}"; done
	export RDM_VM_CTL="$CTL"
	exec "${ARGS[@]}"
) </dev/null >/dev/console 2>&1
status=$?

echo "$status" >"$CTL/status.tmp" && mv "$CTL/status.tmp" "$CTL/status"
sync
echo 0 >/proc/sys/kernel/printk
systemctl poweroff --force --force
