#!/bin/bash
out=/work/wt-sync/perf/results/sync/strace
mkdir -p $out
for r in 1 2 3; do
  for v in base after; do
    if [ $v = base ]; then d=/tmp/sync-base; else d=/work/wt-sync; fi
    (cd $d && strace -f --seccomp-bpf -tt -T -e trace=fsync,syncfs,rename -o $out/$v-$r.strace python -m perf.timeline --scenario capped --runs 1 --json $out/$v-$r.json 2>&1 | head -1 | sed "s/^/$v $r: /")
    grep -E "fsync|syncfs" $out/$v-$r.strace | grep -o "<[0-9.]*>" | tr '\n' ' ' | sed "s/^/  fsyncs: /"; echo
  done
done
