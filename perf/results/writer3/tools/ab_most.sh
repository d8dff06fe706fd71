#!/bin/bash
# WRITE_MOST A/B: /tmp/w3-after (df8ff4a: the locks, 2 MiB writes) against /tmp/w3-after2
# (the same + write_at in calls of 128 KiB at most), mpdl alone, interleaved.
out=/work/wt-writer3/perf/results/writer3
for r in 1 2; do
  for v in after after2; do
    (cd /tmp/w3-$v && python -m perf --scenarios big,depot,capped --runs 3 --roles \
       --peers mpdl --out $out/most-$v-$r > $out/most-$v-$r.log 2>&1)
  done
done
