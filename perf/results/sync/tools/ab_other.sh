#!/bin/bash
for r in 1; do
  for v in base after; do
    if [ $v = base ]; then d=/tmp/sync-base; else d=/tmp/sync-after2; fi
    (cd $d && python -m perf --scenarios depot,gog,big-tls --runs 3 --peers mpdl --out /work/wt-sync/perf/results/sync/other-$v-$r > /tmp/other-$v-$r.log 2>&1)
  done
done
