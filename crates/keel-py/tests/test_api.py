"""The type stubs and docstrings describe the API that is there.

mypy's stubtest compares keel/_keel.pyi with the compiled module (every name, every signature,
argument names and defaults); mypy then type-checks the pure-Python package against the stub, so
a wrapper that calls a native function with a wrong argument fails here. Every public function
and class has a docstring, and each wrapper exposes every argument of the native call it makes."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keel
from keel import _keel, judges, model, rewards

PACKAGE_DIR = Path(keel.__file__).parent


def _mypy(cwd, *args):
    # From an empty directory: mypy then reads the installed wheel (stub included, py.typed),
    # not a source folder.
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": ""},
    )


def test_the_wheel_ships_the_stub_and_py_typed():
    assert (PACKAGE_DIR / "_keel.pyi").is_file() and (PACKAGE_DIR / "py.typed").is_file()


def test_stubtest_finds_the_stub_true_to_the_native_module(tmp_path):
    # PEP 800 @disjoint_base markers are not asked for: no Python 3.9 type checker reads them.
    out = _mypy(tmp_path, "mypy.stubtest", "--ignore-disjoint-bases", "keel._keel")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_type_checks_the_package_against_the_stub(tmp_path):
    out = _mypy(tmp_path, "mypy", "--no-incremental", "--python-executable", sys.executable, "-p", "keel")
    assert out.returncode == 0, out.stdout + out.stderr


def _public(module):
    return [(f"{module.__name__}.{n}", getattr(module, n)) for n in module.__all__]


@pytest.mark.parametrize("module", [keel, rewards, judges, model, _keel], ids=lambda m: m.__name__)
def test_every_public_function_and_class_has_a_docstring(module):
    missing = [
        name
        for name, obj in _public(module)
        if (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj) or callable(obj))
        and not (obj.__doc__ or "").strip()
    ]
    assert not missing, missing
    for cls in (judges.Judge, judges.SpecJudge, _keel.Judge, _keel.SpecJudge, keel.Run, keel.Sweep):
        undocumented = [
            n for n, m in vars(cls).items() if not n.startswith("_") and not (getattr(m, "__doc__", None) or "").strip()
        ]
        assert not undocumented, (cls, undocumented)


def _params(f):
    return [p for p in inspect.signature(f).parameters if p not in ("self", "kwargs")]


@pytest.mark.parametrize(
    "wrapper, native",
    [
        (keel.validate, _keel.validate),
        (keel.run, _keel.run),
        (keel.sweep, _keel.sweep),
        (keel.list_stages, _keel.list_stages),
        (rewards.math_verify, _keel.math_verify),
        (rewards.extract_answer, _keel.extract_answer),
        (rewards.answers_equivalent, _keel.answers_equivalent),
        (judges.train_probe, _keel.train_probe),
        (judges.probe, _keel.Judge.probe),
        (model.import_gguf, _keel.import_gguf),
    ],
    ids=lambda f: getattr(f, "__qualname__", str(f)),
)
def test_wrappers_expose_every_native_argument(wrapper, native):
    assert set(_params(native)) <= set(_params(wrapper)), (_params(native), _params(wrapper))
