#!/bin/bash
for r in 1 2; do
  for v in base after; do
    if [ $v = base ]; then d=/tmp/sync-base; else d=/tmp/sync-after; fi
    (cd $d && python -m perf --scenarios capped,big --runs 3 --peers axel --out /work/wt-sync/perf/results/sync/perf-$v-$r > /tmp/perf-$v-$r.log 2>&1)
  done
done
