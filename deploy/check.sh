#!/bin/sh
# Checks deploy/ and the exporter's output with Prometheus' own tools:
#   1. promtool check rules   deploy/prometheus/alerts.yml
#   2. promtool test rules    deploy/prometheus/alerts.test.yml and pod-join.test.yml
#   3. promtool check metrics on a real scrape of `fivetuple exporter`
#      (Prometheus text format), plus the OpenMetrics answer's content type
#      and `# EOF` terminator
#   4. the Grafana dashboard is valid JSON with a datasource variable
# Needs: promtool (Debian package prometheus), curl, python3.
# The exporter binary is $FIVETUPLE (default target/debug/fivetuple, built if missing).
# Usage: deploy/check.sh   (from the repository root or anywhere)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=${FIVETUPLE:-target/debug/fivetuple}
if [ ! -x "$bin" ]; then
    cargo build -q -p fivetuple-cli
fi

echo "== promtool check rules"
promtool check rules deploy/prometheus/alerts.yml
echo "== promtool test rules"
promtool test rules deploy/prometheus/alerts.test.yml
echo "== promtool test rules (the --all-netns pod join of docs/exporter.md)"
promtool test rules deploy/prometheus/pod-join.test.yml

tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "== promtool check metrics on a scrape of $bin exporter"
"$bin" exporter --listen 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
pid=$!
i=0
while ! grep -q 'http://' "$tmp/out" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "the exporter did not start:" >&2
        cat "$tmp/err" >&2
        exit 1
    fi
    sleep 0.1
done
url=$(sed -n 's|.*\(http://[^ ]*/metrics\).*|\1|p' "$tmp/out")
# Two scrapes: the second carries the per-destination rates.
curl -fsS "$url" >/dev/null
sleep 1
curl -fsS -D "$tmp/text.head" "$url" >"$tmp/text"
grep -qi '^content-type: text/plain; version=0.0.4' "$tmp/text.head"
grep -q '^fivetuple_scrape_collector_success{collector="destinations"} 1' "$tmp/text"
promtool check metrics <"$tmp/text"
echo "  text format: $(grep -c '^fivetuple_' "$tmp/text") samples, promtool clean"
curl -fsS -D "$tmp/om.head" -H 'Accept: application/openmetrics-text;version=1.0.0' "$url" >"$tmp/om"
grep -qi '^content-type: application/openmetrics-text; version=1.0.0' "$tmp/om.head"
[ "$(tail -n 1 "$tmp/om")" = "# EOF" ]
echo "  OpenMetrics: content type and # EOF ok"

echo "== grafana dashboard"
python3 - deploy/grafana/fivetuple.json "$tmp/dashboard-queries.yml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
names = [v["name"] for v in d["templating"]["list"]]
assert "datasource" in names, names
for p in d["panels"]:
    ds = p.get("datasource", {})
    assert ds.get("uid") == "${datasource}", (p["title"], ds)
print("  %d panels, datasource variable ok" % len(d["panels"]))
# Every panel query, with Grafana's variables filled in, as recording rules for promtool.
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    n = 0
    for p in d["panels"]:
        for t in p["targets"]:
            n += 1
            e = t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
            f.write("      - record: dashboard:query_%d\n        expr: %s\n" % (n, json.dumps(e)))
PY
promtool check rules "$tmp/dashboard-queries.yml" >/dev/null
echo "  every panel query parses (promtool)"
echo "deploy/check.sh: all checks passed"
