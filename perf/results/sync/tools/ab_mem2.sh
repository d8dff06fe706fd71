#!/bin/bash
for r in 3; do
  for v in after base freeze; do
    case $v in base) d=/tmp/sync-base;; freeze) d=/tmp/sync-exp3;; after) d=/tmp/sync-after2;; esac
    (cd $d && python -m perf --scenarios v1-100k --runs 1 --peers mpdl --roles --out /work/wt-sync/perf/results/sync/v1-$v-$r > /tmp/v1-$v-$r.log 2>&1)
  done
done
