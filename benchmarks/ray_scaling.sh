#!/usr/bin/env bash
# Ray pool scaling: the same sweep on 1 then 2 actors (one GPU each), tiny checkpoint + synthetic
# watkins parquet. Usage: bash benchmarks/ray_scaling.sh [DEV=cuda|cpu ROWS=300]. Needs requirements-ray.txt.
set -e
export RAY_USAGE_STATS_ENABLED=0 M=/tmp/m DEV=${DEV:-cuda} ROWS=${ROWS:-300}
python3 -c "
import json, os
from evaluation.synthetic import write_synthetic_beans_zero
from naturelm_core.tiny import write_tiny_checkpoint
m = os.environ['M']
write_synthetic_beans_zero(m + '/data', {'watkins': int(os.environ['ROWS'])})
write_tiny_checkpoint(m + '/tiny', seed=0)
json.dump({'name': 'ray scaling', 'source': 'parquet', 'path': m + '/data', 'subsets': ['watkins'],
  'prompts': ['common'], 'alphas': [i / 10 for i in range(11)], 'num_beams': 1, 'max_new_tokens': 20}, open(m + '/spec.json', 'w'))"
for n in 1 2; do
  start=$(date +%s.%N)
  python3 -m evaluation.sweep $M/spec.json --runs-dir $M/runs$n --model $M/tiny --device $DEV --ray --ray-actors $n 2>&1 | grep -v Warning | tail -3
  end=$(date +%s.%N); echo "actors=$n wall_s=$(python3 -c "print(round($end-$start,1))")"
done
python3 -c "import json, glob; [print(p.split('/')[3], json.load(open(p))) for p in sorted(glob.glob('$M/runs*/*/status.json'))]"
