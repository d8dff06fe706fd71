#!/bin/bash
# The final A/B: base (`git archive c59408e` in /tmp/w3-base) against final (`git archive
# cdf4db0` in /tmp/w3-final), interleaved, with the peers.
out=/work/wt-writer3/perf/results/writer3
for r in 1 2; do
  for v in base final; do
    (cd /tmp/w3-$v && python -m perf --scenarios depot,capped,big --runs 3 --roles \
       --peers curl,axel --out $out/final-$v-$r > $out/final-$v-$r.log 2>&1)
  done
done
