#!/bin/sh
# What the NAT view adds to `fivetuple exporter --all-netns` (docs/BENCHMARKS.md):
# two exporters side by side, one with the NAT view and one without it
# (CAP_NET_ADMIN dropped, so conntrack refuses it), over N extra empty
# namespaces (default 40), scraped alternately 20 times; prints the mean
# `netns` collector duration of each. Root; iproute2, curl, setpriv.
# Usage: scripts/exporter-nat-cost.sh target/release/fivetuple [N]
set -eu
bin=$1; n=${2:-40}; p=ftnatcost$$; a=; b=
cleanup() { kill $a $b 2>/dev/null || true; for i in $(seq 1 $n); do ip netns del $p-$i 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for i in $(seq 1 $n); do ip netns add $p-$i; ip -n $p-$i link set lo up; done
$bin exporter --all-netns --listen 127.0.0.1:19391 >/dev/null 2>&1 & a=$!
setpriv --bounding-set -net_admin --inh-caps -net_admin $bin exporter --all-netns --listen 127.0.0.1:19392 >/dev/null 2>&1 & b=$!
sleep 1
for r in $(seq 1 20); do
  for port in 19391 19392; do
    curl -s http://127.0.0.1:$port/metrics | awk -v port=$port '/^fivetuple_scrape_collector_duration_seconds\{collector="netns"\}/ {print port, $2}'
  done
  sleep 1.1
done | awk '{s[$1]+=$2; c[$1]++} END { for (k in s) printf "%s mean %.2f ms over %d scrapes\n", (k==19391?"with NAT   ":"without NAT"), 1000*s[k]/c[k], c[k] }'
