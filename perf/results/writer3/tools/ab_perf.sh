#!/bin/bash
# Interleaved A/B with perf: base = `git archive c59408e` in /tmp/w3-base, after = the branch's
# tree in /tmp/w3-after (git archive HEAD, plus the working diff while measuring).
out=/work/wt-writer3/perf/results/writer3
for r in ${ROUNDS:-1 2}; do
  for v in base after; do
    (cd /tmp/w3-$v && python -m perf --scenarios ${SCEN:-depot,capped,big} --runs 3 --roles \
       --peers ${PEERS:-curl,axel} --out $out/$v-$r > $out/$v-$r.log 2>&1)
  done
done
