#!/bin/bash
for r in 1 2; do
  for v in base after; do
    if [ $v = base ]; then d=/tmp/sync-base; else d=/tmp/sync-after2; fi
    (cd $d && python -m perf --scenarios v1-100k --runs 1 --peers mpdl --roles --out /work/wt-sync/perf/results/sync/v1-$v-$r > /tmp/v1-$v-$r.log 2>&1)
  done
done
