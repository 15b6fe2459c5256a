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

# shellcheck source=/dev/null
. "$CTL/run-command.sh"
run_command /dev/null
systemctl poweroff --force --force
