#!/usr/bin/env bash
# The Python tests of the `keel` wheel (crates/keel-py):
#
#   bash scripts/python-tests.sh [pytest arguments]
#
# 1. makes a virtual environment (KEEL_PY_VENV, default the repository's git-ignored .venv) and
#    installs crates/keel-py/tests/requirements.txt into it with uv (pinned maturin, pytest,
#    pandas, torch, transformers, trl; about 3 GB of wheels, torch being the CUDA build PyPI
#    ships; uv fetches them in parallel and keeps them in its cache, ~/.cache/uv);
# 2. builds the wheel with `maturin build --release` into <target>/wheels (the target directory
#    cargo uses: CARGO_TARGET_DIR or build.target-dir are honoured) and installs it;
# 3. runs pytest on crates/keel-py/tests: the reduced quickstart from Python against its
#    results.json and against the CLI's, the verifier on the GSM8K gold set, the judges, GGUF
#    import, and a 2-step TRL GRPOTrainer run on CPU with Keel's rewards.
#
# Run after `cargo test --release --workspace` (as .ci/run does): the wheel's dependencies are
# then already compiled with the same features and only PyO3 and keel-py are built (see
# crates/keel-py/Cargo.toml), and the `keel` binary the CLI-parity test runs is there. The tests
# read KEEL_DATA_DIR and KEEL_ASSETS (default: the repository's .assets/, filled by
# scripts/fetch-test-data.sh) and fail, naming that script, when files are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$SECONDS

python=${PYTHON:-python3}
venv=${KEEL_PY_VENV:-$repo/.venv}
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export KEEL_DATA_DIR=${KEEL_DATA_DIR:-$repo/.assets/datasets}
export KEEL_ASSETS=${KEEL_ASSETS:-$repo/.assets/models}
# The CLI the parity test compares with; built by the README's test command.
export KEEL_BIN=${KEEL_BIN:-$target_dir/release/keel}
# No test may reach a model hub: the TRL test builds its model here.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

step() { echo "python-tests: $* ($((SECONDS - started)) s)"; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating $venv"
  "$python" -m venv "$venv"
fi
if [ ! -x "$venv/bin/uv" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.8
fi
step "installing crates/keel-py/tests/requirements.txt"
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" -r crates/keel-py/tests/requirements.txt

installed=$SECONDS
step "building the wheel"
log=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$log" "$work"' EXIT
# maturin builds keel-py alone; if its dependency features ever drift from the workspace's,
# cargo recompiles candle and the rest (minutes, not an error): say so, so it gets fixed.
if ! (cd crates/keel-py && "$venv/bin/maturin" build --release --interpreter "$venv/bin/python" --out "$target_dir/wheels") >"$log" 2>&1; then
  cat "$log" >&2
  echo "python-tests: maturin build failed" >&2
  exit 1
fi
grep -E '^ *(Compiling|Finished|📦)' "$log" || true
# PyO3 is rebuilt (maturin turns on its extension-module feature and passes the interpreter), and
# keel-py with it; keel's own crates when their sources changed; and the crates only PyO3 uses
# (`cargo tree -p keel-py -i <crate>`: target-lexicon via pyo3-build-config, indoc, unindent,
# memoffset), which a clean CI clone rebuilds with it. Any other crate (candle, tokenizers,
# serde, ...) means the features differ from the workspace build's.
recompiled=$(sed -n 's/^ *Compiling \([^ ]*\) v.*/\1/p' "$log" | grep -v -E '^(pyo3.*|keel-.*|target-lexicon|indoc|unindent|memoffset)$' | paste -sd ' ' - || true)
if [ -n "$recompiled" ]; then
  echo "python-tests: warning: the wheel build recompiled $recompiled: keel-py's dependency features differ" \
    "from the workspace's test build; update the feature-parity dependencies in crates/keel-py/Cargo.toml" >&2
fi
wheel=$(sed -n 's/.*Built wheel for .* to \(.*\.whl\)$/\1/p' "$log" | tail -1)
[ -f "$wheel" ] || { echo "python-tests: no wheel found in maturin's output" >&2; exit 1; }
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --force-reinstall --no-deps "$wheel"

built=$SECONDS
step "running pytest"
# From a neutral directory, so `import keel` is the installed wheel and not a source folder.
cd "$work"
"$venv/bin/python" -m pytest "$repo/crates/keel-py/tests" -p no:cacheprovider -q --durations=8 "$@"
step "done: environment $((installed - started)) s, wheel $((built - installed)) s, pytest $((SECONDS - built)) s"
