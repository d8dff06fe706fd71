#!/bin/bash
# interleaved timeline A/B on capped: base (/tmp/sync-base) vs this worktree
out=/work/wt-sync/perf/results/sync/timeline
mkdir -p $out
for r in 1 2 3 4; do
  for v in base after; do
    if [ $v = base ]; then d=/tmp/sync-base; else d=/work/wt-sync; fi
    (cd $d && python -m perf.timeline --scenario capped --runs 1 --json $out/$v-$r.json 2>&1 | head -1 | sed "s/^/$v $r: /")
  done
done
