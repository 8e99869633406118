"""Errors cross the boundary as Python exceptions carrying the CLI's messages, never as panics.

Each case runs the `keel` binary on the same input and compares: a ValidationError's text is
what `keel run` prints after `error: ` (exit code 2), and `e.diagnostics` holds the same
diagnostics as data."""

import subprocess
import textwrap

import pytest

import keel
from keel import _keel

from conftest import REPO, keel_bin

QUICKSTART = REPO / "pipelines" / "quickstart.yaml"


def _cli_run_error(path, sets=(), runs_dir="runs"):
    """What `keel run` prints after `error: ` for an invalid pipeline, checking it exits 2."""
    cmd = [str(keel_bin()), "run", str(path), "--quiet", "--runs-dir", str(runs_dir)]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stderr.startswith("error: "), out.stderr
    return out.stderr[len("error: "):].rstrip("\n")


def _raised(call):
    with pytest.raises(keel.ValidationError) as e:
        call()
    # An ordinary exception: `except Exception` catches it (PyO3's PanicException would not be).
    assert isinstance(e.value, keel.KeelError) and isinstance(e.value, Exception)
    return e.value


def test_a_missing_pipeline_file_raises_the_cli_message(tmp_path):
    missing = tmp_path / "no-such-pipeline.yaml"
    expected = _cli_run_error(missing, runs_dir=tmp_path / "runs")
    assert expected == (
        f"{missing}:1:1: error: cannot read pipeline file: No such file or directory (os error 2)\n"
        "  help: check the path and permissions"
    )
    for call in (
        lambda: keel.validate(missing),
        lambda: keel.run(missing, runs_dir=tmp_path / "runs", progress=False),
        lambda: keel.sweep(missing, runs_dir=tmp_path / "runs", progress=False),
    ):
        err = _raised(call)
        assert str(err) == expected
        assert err.diagnostics == [
            {
                "file": str(missing),
                "line": 1,
                "col": 1,
                "message": "cannot read pipeline file: No such file or directory (os error 2)",
                "help": "check the path and permissions",
            }
        ]
    # Nothing was created for a run that never started.
    assert not (tmp_path / "runs").exists()


def test_a_directory_is_not_a_pipeline_file(tmp_path):
    expected = _cli_run_error(tmp_path, runs_dir=tmp_path / "runs")
    assert str(_raised(lambda: keel.validate(tmp_path))) == expected
    assert expected.endswith("error: the pipeline file is a directory\n  help: pass a regular `.yaml` file")


def test_a_wrong_parameter_name_raises_the_cli_message_with_a_suggestion(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            name: typo
            seed: 1
            stages:
              world: {use: synthetic_world, with: {task: arithmetic, n_trian: 50}}
            """
        )
    )
    expected = _cli_run_error(bad, runs_dir=tmp_path / "runs")
    err = _raised(lambda: keel.run(bad, runs_dir=tmp_path / "runs", progress=False))
    assert str(err) == expected
    assert str(err) == (
        f"{bad}:4:58: error: unknown parameter `n_trian` for stage `world` (kind `synthetic_world`)\n"
        "  help: did you mean `n_train`?"
    )
    (d,) = err.diagnostics
    assert (d["line"], d["col"], d["help"]) == (4, 58, "did you mean `n_train`?")


def test_bad_overrides_raise_every_diagnostic_as_the_cli_prints_them(tmp_path):
    """A wrong override value, and a wrong parameter name in an override path: both reported,
    the override's origin named as `--set '...'` the way the CLI names it."""
    sets = ["stages.base.with.steps=many", "stages.base.with.stepz=3"]
    expected = _cli_run_error(QUICKSTART, sets, runs_dir=tmp_path / "runs")
    err = _raised(lambda: keel.run(QUICKSTART, sets, runs_dir=tmp_path / "runs", progress=False))
    assert str(err) == expected
    assert [d["file"] for d in err.diagnostics] == [f"--set '{s}'" for s in sets]
    assert "expected int, found string" in err.diagnostics[0]["message"]
    assert "unknown parameter `stepz`" in err.diagnostics[1]["message"]
    assert expected.endswith("2 errors")


def test_wrong_argument_types_are_type_errors_not_panics():
    # PyO3's argument conversion: a TypeError naming the argument, before any Keel code runs.
    with pytest.raises(TypeError, match="completions"):
        _keel.math_verify([1], ["1"])
    with pytest.raises(TypeError, match="overrides"):
        _keel.validate(str(QUICKSTART), [3])
    with pytest.raises(OverflowError):
        _keel.sweep(str(QUICKSTART), [], -1)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        keel.sweep(QUICKSTART, jobs=0)
    # A wrong keyword is Python's own TypeError.
    with pytest.raises(TypeError, match="runz_dir"):
        keel.run(QUICKSTART, runz_dir="runs")
