#!/usr/bin/env bash
# The rdm demo: backing files on persistent memory (emulated in the VM), a
# two-segment table (linear + striped), a file system on the device, a
# verified write, the management verbs, and removal. Run by `cargo xtask demo`.
set -euo pipefail
RDM=${RDM_BIN:-$(realpath "$(dirname "$0")/../target/debug/rdm")}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

dir=$(mktemp -d /tmp/rdm-demo.XXXX)
mnt=$dir/mnt
cleanup() {
  set +e
  mountpoint -q "$mnt" && umount "$mnt"
  "$RDM" ls --json 2>/dev/null | grep -q '"name": "demo"' && "$RDM" remove --force demo
  mountpoint -q "$dir/pmem" && umount "$dir/pmem"
}
trap cleanup EXIT

step "backing store"
if [ -e /sys/bus/nd/devices/namespace0.0 ] && command -v ndctl >/dev/null; then
  echo "$ ndctl create-namespace -f -e namespace0.0 -m fsdax"
  ndctl create-namespace -f -e namespace0.0 -m fsdax >/dev/null
  for _ in $(seq 50); do [ -b /dev/pmem0 ] && break; sleep 0.1; done
  run mkfs.ext4 -q -F -b 4096 /dev/pmem0
  mkdir -p "$dir/pmem"
  run mount -o dax /dev/pmem0 "$dir/pmem"
  store=$dir/pmem
else
  echo "no NVDIMM here: backing files in $dir"
  store=$dir
fi
run truncate -s 64M "$store/lin.img" "$store/s0.img" "$store/s1.img"

step "create: 64 MiB linear + 128 MiB striped over two files in 64 KiB chunks (DAX path when the files are on fs-dax)"
table="0 131072 linear $store/lin.img 0
131072 262144 striped 2 128 $store/s0.img 0 $store/s1.img 0"
printf '%s\n' "$table"
dev=$(printf '%s\n' "$table" | "$RDM" create demo -)
echo "$dev"

step "a file system on it, spanning both segments"
run mkfs.ext4 -q -F "$dev"
mkdir -p "$mnt"
run mount "$dev" "$mnt"
run dd if=/dev/urandom of="$mnt/data" bs=1M count=150 status=none
sum1=$(sha256sum <"$mnt/data")
run umount "$mnt"
run mount "$dev" "$mnt"
sum2=$(sha256sum <"$mnt/data")
[ "$sum1" = "$sum2" ] && echo "150 MiB written, unmounted, read back: identical ($sum1)"
run umount "$mnt"

step "what rdm knows"
run "$RDM" ls
run "$RDM" table demo
run "$RDM" status demo

step "remove"
run "$RDM" remove demo
[ ! -e "$dev" ] && echo "$dev is gone"
echo "demo finished"
