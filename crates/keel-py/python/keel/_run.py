"""Pipelines from Python: :func:`validate`, :func:`run`, :func:`sweep` and the run directories
they write, read as tables (:class:`Run`, :class:`Sweep`).

The functions call the same Rust code as ``keel validate / run / sweep`` (see the native module
``keel._keel``); this module converts arguments and reads the files a run leaves behind
(``results.json``, ``metrics.jsonl``, ``rollouts.jsonl``, ``manifest.json``, ``status.json``),
whose formats docs/metrics.md and docs/pipelines.md describe.
"""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import _keel
from ._frames import columns_in_order, table

PathLike = Union[str, "os.PathLike[str]"]
#: Overrides as ``{"stages.learn.with.beta": 0.0}`` (values are typed: the value is written as
#: JSON, which is YAML, so ``0.0`` is a float and ``"ppo"`` a string) or as the CLI's
#: ``["stages.learn.with.beta=0.0"]`` strings (parsed as YAML, as ``--set`` does).
Overrides = Union[Mapping[str, Any], Sequence[str], None]


def _override_list(overrides: Overrides) -> List[str]:
    """The ``--set path=value`` strings for ``overrides``."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError(
            "overrides must be a dict {path: value} or a list of 'path=value' strings, not one string"
        )
    if isinstance(overrides, Mapping):
        out = []
        for path, value in overrides.items():
            if not isinstance(path, str):
                raise TypeError(f"override paths are strings like 'stages.learn.with.beta', not {path!r}")
            try:
                text = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise TypeError(f"override {path}: {value!r} is not a JSON/YAML value ({e})") from None
            out.append(f"{path}={text}")
        return out
    out = []
    for o in overrides:
        if not isinstance(o, str):
            raise TypeError(f"overrides in list form are 'path=value' strings, not {o!r}")
        out.append(o)
    return out


@dataclass(frozen=True)
class PipelineInfo:
    """What :func:`validate` found in a valid pipeline."""

    #: ``name:``, also the directory under the runs directory.
    name: str
    #: ``description:``, if any.
    description: Optional[str]
    #: Stage names in file order.
    stages: List[str]
    #: The hash of the resolved configuration, as recorded in manifest.json.
    config_hash: str
    #: Number of cells of the ``sweep:`` block, or None without one.
    sweep_cells: Optional[int]


def validate(path: PathLike, overrides: Overrides = None) -> PipelineInfo:
    """Validates a pipeline file without running it, as ``keel validate`` does.

    Checks the schema, stage kinds, parameters (types and ranges), wiring, cycles and every cell
    of a ``sweep:`` block. Raises :class:`keel.ValidationError` listing every problem as
    ``file:line:col: error: ...`` with a help line (``e.diagnostics`` has them as dicts).
    """
    info = _keel.validate(os.fspath(path), _override_list(overrides))
    return PipelineInfo(**info)


def run(
    path: PathLike,
    overrides: Overrides = None,
    *,
    runs_dir: PathLike = "runs",
    run_id: Optional[str] = None,
    resume: bool = False,
    dry_run: bool = False,
    progress: Optional[bool] = None,
) -> "Run":
    """Runs a pipeline, as ``keel run`` does, and returns its run directory as a :class:`Run`.

    The pipeline is validated completely first (:class:`keel.ValidationError`), then
    ``<runs_dir>/<pipeline>/<run_id>/manifest.json`` is written and every stage runs on its own
    thread, in Rust, with the GIL released. ``run_id`` defaults to a UTC timestamp; ``resume=True``
    continues the interrupted run ``run_id`` in place (same file and overrides). ``dry_run=True``
    executes the pipeline shrunk (2 training steps, tiny stand-in models) to check a recipe.
    Progress goes to standard error: the CLI's bars in a terminal, short lines elsewhere (a
    notebook, a log); ``progress=False`` hides it. Ctrl-C cancels the run (the directory stays
    readable and resumable) and raises ``KeyboardInterrupt``. A failed stage raises
    :class:`keel.RunFailedError` (``e.run_dir`` names the directory).
    """
    info = _keel.run(
        os.fspath(path),
        _override_list(overrides),
        os.fspath(runs_dir),
        run_id,
        resume,
        dry_run,
        progress,
    )
    return Run(info["run_dir"], info)


def sweep(
    path: PathLike,
    overrides: Overrides = None,
    *,
    jobs: int = 1,
    runs_dir: PathLike = "runs",
    dry_run: bool = False,
    progress: Optional[bool] = None,
) -> "Sweep":
    """Runs every cell of a pipeline's ``sweep:`` block, ``jobs`` at a time, as ``keel sweep``.

    Cells already complete with the same configuration are skipped, so rerunning a sweep only
    runs what is missing. Afterwards ``summary.csv`` / ``summary.md`` (means with 95% bootstrap
    confidence intervals) and the sweep's ``report.md`` are written. ``dry_run=True`` only lists
    the cells. If some cells failed, the others still ran and :class:`keel.SweepFailedError` is
    raised with the :class:`Sweep` on ``e.sweep``.
    """
    info = _keel.sweep(
        os.fspath(path),
        _override_list(overrides),
        jobs,
        os.fspath(runs_dir),
        dry_run,
        progress,
    )
    result = Sweep(info)
    if info.get("failure"):
        error_type = _keel.CancelledError if info.get("cancelled") else _keel.SweepFailedError
        err = error_type(info["failure"])
        err.sweep = result
        raise err
    return result


def list_stages(markdown: bool = False) -> str:
    """Every stage kind with its ports, parameters and resources, as ``keel list`` prints it."""
    return _keel.list_stages(markdown)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _jsonl(path: Path) -> Iterator[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _user_text(prompt: Any) -> Any:
    """The last user turn of a prompt (a string, or a list of chat messages)."""
    if isinstance(prompt, list):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user":
                return m.get("content", "")
        return ""
    return prompt


class Run:
    """A run directory: ``runs/<pipeline>/<run-id>/``, returned by :func:`run` or opened with
    ``Run("runs/quickstart/20250101-120000")``.

    Its files are read when asked for, so a Run of a directory that is still being written
    shows what is there so far.
    """

    def __init__(self, dir: PathLike, info: Optional[Dict[str, Any]] = None) -> None:
        #: The run directory.
        self.dir = Path(dir)
        self._info = info or {}
        if not self.dir.is_dir():
            raise FileNotFoundError(f"{self.dir} is not a run directory")

    def __repr__(self) -> str:
        return f"keel.Run({str(self.dir)!r})"

    def _file(self, name: str) -> Path:
        p = self.dir / name
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist (has the run written it yet?)")
        return p

    @property
    def run_id(self) -> str:
        """The run id (the directory's name)."""
        return self._info.get("run_id", self.dir.name)

    @property
    def manifest(self) -> Dict[str, Any]:
        """manifest.json: the resolved configuration and its hash, Keel version, git revision,
        seeds, command line and sha256 of every input file."""
        return _read_json(self._file("manifest.json"))

    @property
    def status(self) -> Dict[str, Any]:
        """status.json: the run's state, timings and each stage's outcome."""
        return _read_json(self._file("status.json"))

    @property
    def report_md(self) -> Path:
        """The path of report.md (written by the pipeline's ``report`` stage)."""
        return self._file("report.md")

    @property
    def results_records(self) -> List[Dict[str, Any]]:
        """results.json as it is: one dict per evaluated checkpoint, with its per-set metrics."""
        return _read_json(self._file("results.json"))

    @property
    def results(self) -> Any:
        """One row per evaluated checkpoint (``label``), with every scalar field of results.json:
        capability, safety, over_refusal, kl, drift, chi2 and its ESS, the drift bounds
        (drift_bound_kl, drift_bound_chi2) and whether they hold. Per-set metrics are in
        :meth:`set_metrics`."""
        rows = [
            {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
            for r in self.results_records
        ]
        return table(rows, columns_in_order(rows, ["label"]))

    def set_metrics(self) -> Any:
        """Every per-set metric of results.json in long form: label, kind (``set`` or
        ``benchmark``), set, n, metric, value."""
        rows = []
        for r in self.results_records:
            for kind, key in (("set", "sets"), ("benchmark", "benchmarks")):
                for name, m in (r.get(key) or {}).items():
                    for metric, value in m.get("values", {}).items():
                        rows.append(
                            {
                                "label": r.get("label"),
                                "kind": kind,
                                "set": name,
                                "n": m.get("n"),
                                "metric": metric,
                                "value": value,
                            }
                        )
        return table(rows, ["label", "kind", "set", "n", "metric", "value"])

    def metrics(self, stage: Optional[str] = None) -> Any:
        """metrics.jsonl, one row per record: stage, step, then one column per metric name
        (loss, reward_mean, kl_ref, ...; missing where a record lacks it). ``stage`` keeps one
        stage's records."""
        rows = []
        for rec in _jsonl(self._file("metrics.jsonl")):
            if stage is not None and rec.get("stage") != stage:
                continue
            rows.append({"stage": rec.get("stage"), "step": rec.get("step"), **rec.get("values", {})})
        return table(rows, columns_in_order(rows, ["stage", "step"]))

    def rollouts(self, stage: Optional[str] = None) -> Any:
        """rollouts.jsonl (every scored RL rollout), one row per completion: stage, step, group,
        example_id, source, category, safety, prompt (the user's text), prompt_text (as rendered
        for the model), answer, completion, finish, n_tokens, policy_version, reward, one
        ``reward.<component>`` column per reward component and ``verdict.<judge>.p_unsafe`` /
        ``.refused`` per safety judge that ran. ``stage`` keeps one learner's rollouts."""
        rows = []
        path = self.dir / "rollouts.jsonl"
        if not path.is_file():
            return table([], ["stage", "step"])
        for rec in _jsonl(path):
            if stage is not None and rec.get("stage") != stage:
                continue
            r = rec.get("rollout", {})
            ex = r.get("example", {})
            c = r.get("completion", {})
            row = {
                "stage": rec.get("stage"),
                "step": rec.get("step"),
                "group": r.get("group"),
                "example_id": ex.get("id"),
                "source": ex.get("source"),
                "category": ex.get("category"),
                "safety": ex.get("safety"),
                "prompt": _user_text(ex.get("prompt")),
                "prompt_text": r.get("prompt_text"),
                "answer": ex.get("answer"),
                "completion": c.get("text"),
                "finish": c.get("finish"),
                "n_tokens": len(c.get("token_ids", [])),
                "policy_version": c.get("policy_version"),
                "reward": rec.get("reward"),
            }
            for name, value in (rec.get("components") or {}).items():
                row[f"reward.{name}"] = value
            for name, v in (rec.get("verdicts") or {}).items():
                row[f"verdict.{name}.p_unsafe"] = v.get("p_unsafe")
                row[f"verdict.{name}.refused"] = v.get("refused")
            rows.append(row)
        first = [
            "stage", "step", "group", "example_id", "source", "category", "safety", "prompt",
            "prompt_text", "answer", "completion", "finish", "n_tokens", "policy_version", "reward",
        ]
        return table(rows, columns_in_order(rows, first))


class Sweep:
    """What :func:`sweep` did: the sweep directory, its cells and their outcomes."""

    def __init__(self, info: Dict[str, Any]) -> None:
        self._info = info
        #: ``runs/<pipeline>/sweep/``.
        self.dir = Path(info["dir"])
        #: One dict per cell: index, id, group, seed, dir, outcome (complete, skipped, failed,
        #: cancelled; None for a dry run) and error.
        self.cells: List[Dict[str, Any]] = list(info["cells"])

    def __repr__(self) -> str:
        return f"keel.Sweep({str(self.dir)!r}, {len(self.cells)} cells)"

    @property
    def summary_csv(self) -> Optional[Path]:
        """summary.csv (None for a dry run)."""
        p = self._info.get("summary_csv")
        return Path(p) if p else None

    @property
    def summary_md(self) -> Optional[Path]:
        """summary.md (None for a dry run)."""
        p = self._info.get("summary_md")
        return Path(p) if p else None

    @property
    def report_md(self) -> Optional[Path]:
        """The sweep's report.md, when its cells had results to plot."""
        p = self._info.get("report_md")
        return Path(p) if p else None

    def runs(self) -> List[Run]:
        """The run directory of every cell that is complete (run now or skipped as done)."""
        return [Run(c["dir"]) for c in self.cells if c.get("outcome") in ("complete", "skipped")]

    def summary(self) -> Any:
        """summary.csv as a table: one row per parameter point and metric, with mean, std and
        the 95% bootstrap confidence interval over seeds."""
        if self.summary_csv is None:
            raise FileNotFoundError("a dry-run sweep wrote no summary")
        with open(self.summary_csv, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [{k: _number(v) for k, v in row.items()} for row in reader]
            columns = list(reader.fieldnames or [])
        return table(rows, columns)


def _number(text: Optional[str]) -> Any:
    """A CSV cell as int or float where it is one, else the text."""
    if text is None:
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
