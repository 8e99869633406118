#!/usr/bin/env bash
# Regenerates the model answers of the judge-accuracy labelled set (data/judge_labels/): runs
# pipelines/judge_labels/responses.yaml for SmolLM2-135M-Instruct and for
# Qwen2.5-Coder-0.5B-Instruct (greedy, at most 128 new tokens, the same 50 prompts each) and
# gathers both runs' completions.jsonl into one JSON Lines file with the fields of
# labelled.jsonl except `label` and `note`.
#
#   export KEEL_ASSETS=~/.cache/keel/assets KEEL_DATA_DIR=../shared/datasets
#   KEEL_FETCH_QWEN=1 ../shared/scripts/fetch-assets.sh "$KEEL_ASSETS"      # once
#   keel model import "$KEEL_ASSETS/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf" \
#     --out "$KEEL_ASSETS/qwen2.5-coder-0.5b-instruct/keel"                  # once
#   bash scripts/judge-labels-responses.sh [OUT]       # default OUT: runs/judge-labels-responses/responses.jsonl
#   jq -c 'del(.label, .note)' data/judge_labels/labelled.jsonl | diff - OUT   # same answers?
#
# KEEL_BIN names the keel binary (default target/release/keel). Needs jq.
set -euo pipefail
: "${KEEL_ASSETS:?set KEEL_ASSETS to the asset directory}" "${KEEL_DATA_DIR:?set KEEL_DATA_DIR to the dataset cache}"
cd "$(dirname "$0")/.."
keel=${KEEL_BIN:-target/release/keel}
out=${1:-runs/judge-labels-responses/responses.jsonl}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
runs=runs/judge-labels-responses

"$keel" --quiet run pipelines/judge_labels/responses.yaml --run-id "smollm2-$stamp"
"$keel" --quiet run pipelines/judge_labels/responses.yaml --run-id "qwen-$stamp" \
  --set stages.model.with.label=qwen2.5-coder-0.5b-instruct \
  --set 'stages.model.with.source=${KEEL_ASSETS}/qwen2.5-coder-0.5b-instruct/keel'

mkdir -p "$(dirname "$out")"
for run in "smollm2-$stamp" "qwen-$stamp"; do
  # The evaluate stage names a merged set by its sources: the harmful input is
  # advbench+jbb-harmful+xstest (XSTest's unsafe rows), the benign one alpaca-instructions+xstest.
  jq -c '{
      id: (.label + "/" + .id), model: .label, dataset: (.id | sub("-[^-]+$"; "")), row: .id,
      prompt_safety: (if .set == "advbench+jbb-harmful+xstest" then "harmful"
                      elif .set == "alpaca-instructions+xstest" then "benign"
                      else error("unexpected set name " + .set) end),
      prompt: .prompt, response: .completion, finish: .finish }' \
    "$runs/$run/stages/evaluate/completions.jsonl"
done > "$out"
echo "wrote $(wc -l < "$out") answers to $out"
