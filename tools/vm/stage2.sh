#!/bin/bash
# Stage 2 of the rdm VM rig: PID 1 on the host's (read-only) root.
# Loads the kernel modules rdm needs, runs the requested command in the
# caller's working directory with the caller's chosen environment, writes
# its exit status to the control dir and powers off.
#
# PID 1 must never exit (the kernel would panic), so no `set -e` here.

CTL=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=/dev/null
. "$CTL/stage1.env"

mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
# The host reads the serial console as plain bytes: no CR before each LF.
stty -onlcr </dev/console 2>/dev/null
/bin/busybox ip link set lo up 2>/dev/null

# -C: ignore the host's /etc/modprobe.d (ndctl ships a hook there that
# breaks loading nfit/nd_pmem from an alternate root).
mkdir -p /run/rdm-empty-modprobe.d
if ! modprobe -C /run/rdm-empty-modprobe.d -d "$RDM_KROOT" -S "$(uname -r)" \
	-a ublk_drv loop dm-mod dm-zero nfit nd_pmem dax_pmem device_dax ext4 xfs; then
	echo "rdm-vm stage2: warning: some kernel modules failed to load" >&2
fi

# shellcheck source=/dev/null
. "$CTL/run-command.sh"
run_command /dev/console
/bin/busybox poweroff -f
