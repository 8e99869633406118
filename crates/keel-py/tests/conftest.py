"""Shared fixtures of the keel wheel's tests (run by scripts/python-tests.sh).

Real data and models come from KEEL_DATA_DIR and KEEL_ASSETS, as in the Rust tests; unset, they
default to the repository's .assets/ folders that `bash scripts/fetch-test-data.sh` fills (the
same defaults .cargo/config.toml gives cargo's test runs). Tests that need a missing file fail
and name that script; they do not skip.
"""

import os
from pathlib import Path

import pytest

#: The repository root (this file is crates/keel-py/tests/conftest.py).
REPO = Path(__file__).resolve().parents[3]
FETCH_HINT = "run `bash scripts/fetch-test-data.sh` (it fills KEEL_DATA_DIR and KEEL_ASSETS)"


def data_dir() -> Path:
    return Path(os.environ.get("KEEL_DATA_DIR") or REPO / ".assets" / "datasets")


def assets_dir() -> Path:
    return Path(os.environ.get("KEEL_ASSETS") or REPO / ".assets" / "models")


def keel_bin() -> Path:
    """The `keel` CLI the parity tests compare with (KEEL_BIN, set by scripts/python-tests.sh to
    the binary in cargo's target directory)."""
    path = Path(os.environ.get("KEEL_BIN") or REPO / "target" / "release" / "keel")
    assert path.is_file(), (
        f"no keel binary at {path}: build it with `cargo test --release --workspace --no-run` "
        "(scripts/python-tests.sh sets KEEL_BIN to the one in cargo's target directory)"
    )
    return path


def require_file(path: Path) -> Path:
    assert path.is_file(), f"{path} is missing: {FETCH_HINT}"
    return path


def reduced_quickstart_sets() -> list:
    """The reduced quickstart's overrides, shared with tests/quickstart.rs and scripts/smoke.sh."""
    lines = (REPO / "tests" / "fixtures" / "quickstart_smoke.sets").read_text().splitlines()
    return [l for l in (x.strip() for x in lines) if l and not l.startswith("#")]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """The reduced quickstart, run once from Python for every test that reads its directory."""
    import keel

    runs = tmp_path_factory.mktemp("runs")
    return keel.run(
        REPO / "pipelines" / "quickstart.yaml",
        reduced_quickstart_sets(),
        runs_dir=runs,
        run_id="py",
        progress=False,
    )
