#!/usr/bin/env bash
# Benchmark of `fivetuple repro` (docs/BENCHMARKS.md, section "fivetuple repro"):
# for each remedy, open-loop runs of 30 s in a 1,000-port box at rates that
# bracket its limit, and the driver's own ceiling with `pooled`.
# Needs root. Usage: bench/repro-bench.sh [OUT.jsonl]   (about 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:-/tmp/repro-bench.jsonl}
cargo build --release -q -p fivetuple-cli
bin=target/release/fivetuple
: > "$out"
run() { # remedy rate
  "$bin" repro --only "$1" --rate "$2" --duration "${DURATION:-30s}" --json \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["remedies"][0]; r.pop("timeline"); r["rate"]=d["box"]["rate_per_s"]; print(json.dumps(r))' >> "$out"
  tail -n1 "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%10s %6d/s ok %7d failed %6d achieved %.1f/s p99 %s ms  %s" % (r["name"], r["rate"], r["ok"], r["failed"], r["achieved_per_s"], r["latency_ms_p99"], r["verdict_text"]))'
}
for r in 33 35; do run naive $r; done
for r in 33 35; do run auth $r; done
for r in 1000 2000 2100; do run wide-range $r; done
for r in 1000 1500 2000; do run tw-reuse $r; done
for r in 530 560; do run spread $r; done
for r in 2000 5000 8000; do run rotate $r; done
for r in 5000 8000 12000; do run pooled $r; done
