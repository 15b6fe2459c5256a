#!/bin/sh
# Same boot A/B: the ublk device's I/O scheduler (mq-deadline, the kernel's
# choice for a one-queue blk-mq device) against none, or any list of them
# (SCHEDS="mq-deadline none bfq"), in zero copy and copy mode (MODES="on
# off"). From the tree:
#   cargo build --release && cargo xtask vm --kernel latest --icount -- tools/perf/scheduler-ab.sh
# Results in target/prof/sched.txt.
ROOT=$(pwd)
R=${RDM:-$ROOT/target/release/rdm}
OUT=$ROOT/target/prof
mkdir -p "$OUT"
cd /tmp
# Filled like the bench's file: reads of a sparse tmpfs file skip the copy.
dd if=/dev/zero of=/tmp/lin.img bs=1M count=256 status=none
job() { dev=$1; shift; fio --name=j --filename=$dev "$@" --ioengine=io_uring --direct=1 --time_based --runtime=1 --size=128M --randseed=1 --output-format=terse --terse-version=3 | awk -F';' '{print $8+$49, $40+$81}'; }
for mode in ${MODES:-on off}; do
  $R create s --table "0 262144 linear /tmp/lin.img 0" --zero-copy $mode --dax off --scheduler kernel >/dev/null
  sleep 1
  S=/sys/block/ublkb0/queue/scheduler
  echo "zc=$mode default: $(cat $S)" >> $OUT/sched.txt
  for rep in 1 2 3; do
    for sch in ${SCHEDS:-mq-deadline none}; do
      echo $sch > $S
      grep -q "\[$sch\]" $S || { echo "zc=$mode: cannot set $sch" >> $OUT/sched.txt; continue; }
      job /dev/ublkb0 --rw=randread --bs=4k --iodepth=1 >/dev/null
      a=$(job /dev/ublkb0 --rw=randread --bs=4k --iodepth=1)
      b=$(job /dev/ublkb0 --rw=randread --bs=4k --iodepth=32)
      c=$(job /dev/ublkb0 --rw=randwrite --bs=4k --iodepth=32)
      d=$(job /dev/ublkb0 --rw=read --bs=64k --iodepth=8)
      echo "zc=$mode $sch rep$rep: qd1 $a | rr32 $b | rw32 $c | r64k $d" >> $OUT/sched.txt
    done
  done
  $R remove s
done
echo sched-done
