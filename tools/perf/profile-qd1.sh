#!/bin/sh
# In-guest profiles: where the guest instructions go, by command, DSO and
# symbol (cpu-clock under -icount counts instructions). From the tree:
#   cargo build --release && cargo xtask vm --kernel latest --icount \
#     --pmem-image PMEM.img -- tools/perf/profile-qd1.sh
# (the pmem part needs an NVDIMM with a namespace, e.g. a copy of
# target/bench/pmem-latest.img). Results in target/prof/.
# MODE=r64 profiles the 64k sequential read at QD8 instead (the bench's
# read-64k-qd8 job over a filled file): kernel dm-linear on loop, rdm zero
# copy with scheduler none and with the kernel's, and rublk's zero copy if
# target/bench/rublk is built. Results in target/prof/r64-*.
# MODE=large: see below. MODE=qd1 stops after the 4 KiB QD1 rows.
ROOT=$(pwd)
R=${RDM:-$ROOT/target/release/rdm}
OUT=$ROOT/target/prof
mkdir -p "$OUT"
cd /tmp
echo 0 > /proc/sys/kernel/kptr_restrict
echo -1 > /proc/sys/kernel/perf_event_paranoid
# Filled like the bench's file: reads of a sparse tmpfs file skip the copy.
dd if=/dev/zero of=/tmp/lin.img bs=1M count=256 status=none
# The sampling period, in guest ns (= instructions under icount): a prime
# near no multiple of a request's cycle. icount makes a QD1 loop exactly
# periodic, and a round period (100 us) against a ~50 us request sampled
# the same few phases of it over and over.
PERIOD=${PERIOD:-37013}
QD1="--rw=randread --bs=4k --iodepth=1"
W64="--rw=write --bs=64k --iodepth=8"
job() { dev=$1; secs=$2; shift 2; fio --name=j --filename=$dev "$@" --ioengine=io_uring --direct=1 --time_based --runtime=$secs --size=128M --randseed=1 --output-format=terse --terse-version=3 | awk -F';' '{print "read_iops", $8, "read_lat_mean_us", $40, "write_iops", $49, "write_lat_mean_us", $81}'; }
prof() {
  tag=$1; dev=$2; shift 2
  # fio would create a regular file (on devtmpfs) for a missing node.
  [ -b "$dev" ] || { echo "$tag: $dev is not a block device" >&2; exit 1; }
  job $dev 1 "$@" >/dev/null
  job $dev 2 "$@" > $OUT/$tag.fio
  perf record -q -a -e cpu-clock -c $PERIOD -o /tmp/$tag.data -- fio --name=j --filename=$dev "$@" --ioengine=io_uring --direct=1 --time_based --runtime=2 --size=128M --randseed=1 >/dev/null 2>&1
  perf report -i /tmp/$tag.data --sort comm,dso --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -30 > $OUT/$tag.dso
  perf report -i /tmp/$tag.data --sort sym --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -70 > $OUT/$tag.sym
  perf report -i /tmp/$tag.data --sort comm --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -20 > $OUT/$tag.comm
  # The server thread's own symbols (kernel and user), by share of all samples.
  perf report -i /tmp/$tag.data --sort comm,sym --stdio 2>/dev/null | grep -E "rdm-queue|rublk" | head -40 > $OUT/$tag.srv
}
if [ "$MODE" = r64 ]; then
  R64="--rw=read --bs=64k --iodepth=8"
  L=$(losetup -f --show --direct-io=on /tmp/lin.img)
  echo "0 262144 linear $L 0" | dmsetup create plin && dmsetup mknodes plin
  prof r64-dm-linear /dev/mapper/plin $R64
  dmsetup remove plin; losetup -d $L
  for S in none kernel; do
    $R create prof --table "0 262144 linear /tmp/lin.img 0" --zero-copy on --dax off --scheduler $S >/dev/null
    sleep 1
    prof r64-rdm-zc-$S /dev/ublkb0 $R64
    $R remove prof
  done
  RUBLK=$ROOT/target/bench/rublk/bin/rublk
  if [ -x $RUBLK ]; then
    $RUBLK add loop -f /tmp/lin.img -z --quiet
    sleep 2
    prof r64-rublk-zc /dev/ublkb0 $R64
    $RUBLK del -n 0 >/dev/null 2>&1
  fi
  echo r64-done
  exit 0
fi
# MODE=large: the bench's three large-I/O jobs (64k read and write at QD8,
# 512k read at QD4), kernel dm-linear on loop against rdm zero copy with
# scheduler none. Results in target/prof/{r64,w64,r512}-*.
if [ "$MODE" = large ]; then
  for J in "r64 --rw=read --bs=64k --iodepth=8" "w64 --rw=write --bs=64k --iodepth=8" \
           "r512 --rw=read --bs=512k --iodepth=4"; do
    set -- $J; T=$1; shift
    L=$(losetup -f --show --direct-io=on /tmp/lin.img)
    echo "0 262144 linear $L 0" | dmsetup create plin && dmsetup mknodes plin
    prof $T-dm-linear /dev/mapper/plin "$@"
    dmsetup remove plin; losetup -d $L
    $R create prof --table "0 262144 linear /tmp/lin.img 0" --zero-copy on --dax off >/dev/null
    sleep 1
    prof $T-rdm-zc-none /dev/ublkb0 "$@"
    $R remove prof
  done
  echo large-done
  exit 0
fi
L=$(losetup -f --show --direct-io=on /tmp/lin.img)
echo "0 262144 linear $L 0" | dmsetup create plin && dmsetup mknodes plin
prof dm-linear /dev/mapper/plin $QD1
dmsetup remove plin; losetup -d $L
$R create prof --table "0 262144 linear /tmp/lin.img 0" --zero-copy on --dax off >/dev/null
sleep 1
prof rdm-zc /dev/ublkb0 $QD1
$R remove prof
$R create prof --table "0 262144 linear /tmp/lin.img 0" --zero-copy off --dax off >/dev/null
sleep 1
prof rdm-copy /dev/ublkb0 $QD1
$R remove prof
echo qd1-done
[ "$MODE" = qd1 ] && exit 0
if [ -e /dev/pmem0 ]; then
  mkdir -p /tmp/pm
  mkfs.ext4 -q -F -b 4096 /dev/pmem0 && mount -o dax /dev/pmem0 /tmp/pm
  dd if=/dev/zero of=/tmp/pm/f.img bs=1M count=128 oflag=direct status=none
  $R create prof --table "0 262144 linear /tmp/pm/f.img 0" --dax required >/dev/null
  sleep 1
  prof dax-w64 /dev/ublkb0 $W64
  $R remove prof
  $R create prof --table "0 262144 linear /tmp/pm/f.img 0" --dax off --zero-copy on >/dev/null
  sleep 1
  prof zc-pmem-w64 /dev/ublkb0 $W64
  $R remove prof
  echo pmem-done
fi
# What a create + remove costs (the tests do hundreds).
for B in $ROOT/target/debug/rdm $R; do
  t0=$(cut -d' ' -f1 /proc/uptime)
  for i in 1 2 3; do $B create prof --table "0 262144 linear /tmp/lin.img 0" >/dev/null; $B remove prof; done
  t1=$(cut -d' ' -f1 /proc/uptime)
  for i in 1 2 3 4 5 6 7 8 9 10; do $B ls >/dev/null; done
  t2=$(cut -d' ' -f1 /proc/uptime)
  echo "$B: 3 create+remove $t0..$t1, 10 ls $t1..$t2" >> $OUT/cli.txt
done
echo cli-done
