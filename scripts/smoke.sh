#!/usr/bin/env bash
# Smoke test: the quickstart pipeline end to end with reduced budgets (the overrides in
# tests/fixtures/quickstart_smoke.sets, which tests/quickstart.rs runs too), run twice; the two
# runs must produce byte-identical results (same seed → same numbers on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
# The release binary, (re)built if stale, wherever cargo puts it (CARGO_TARGET_DIR, build.target-dir).
# Built as the README's test command builds it: `cargo build -p keel-cli` unifies dependency
# features differently and would rebuild half the workspace after a test run.
cargo test --release --workspace --no-run --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
keel=$target_dir/release/keel
[ -x "$keel" ] || { echo "smoke: no keel binary at $keel after building it" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
reduced=()
while IFS= read -r line; do
  case $line in '' | '#'*) ;; *) reduced+=(--set "$line") ;; esac
done < tests/fixtures/quickstart_smoke.sets
"$keel" validate pipelines/quickstart.yaml
for id in a b; do
  "$keel" run pipelines/quickstart.yaml --quiet --runs-dir "$out" --run-id "$id" "${reduced[@]}"
done
for f in manifest.json results.json report.md metrics.jsonl status.json; do
  [ -s "$out/quickstart/a/$f" ] || { echo "smoke: missing $f" >&2; exit 1; }
done
if ! cmp -s "$out/quickstart/a/results.json" "$out/quickstart/b/results.json"; then
  echo "smoke: two runs with the same seed gave different results" >&2
  diff <(head -c 4000 "$out/quickstart/a/results.json") <(head -c 4000 "$out/quickstart/b/results.json") >&2 || true
  exit 1
fi
sed -n '1,15p' "$out/quickstart/a/report.md"
echo "smoke: quickstart ran twice with identical results"
