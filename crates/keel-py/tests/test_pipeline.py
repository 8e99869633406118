"""keel.validate / keel.run / keel.sweep and the Run tables, against the files the run writes."""

import json
import signal
import subprocess
import textwrap
import time

import pytest

import keel
from keel import _frames

from conftest import REPO, keel_bin, reduced_quickstart_sets

QUICKSTART = REPO / "pipelines" / "quickstart.yaml"
LABELS = ["base", "sft", "sft-ema", "grpo-kl", "grpo-nokl", "ppo"]


# --- validate -------------------------------------------------------------------------------


def test_validate_returns_the_pipeline_and_its_config_hash():
    info = keel.validate(QUICKSTART)
    assert info.name == "quickstart"
    assert info.stages[:3] == ["world", "tokenizer", "base"]
    assert "evaluate" in info.stages and info.sweep_cells is None
    assert len(info.config_hash) == 64
    # Overrides change the resolved configuration, so its hash.
    assert keel.validate(QUICKSTART, {"stages.base.with.steps": 60}).config_hash != info.config_hash


def test_dict_overrides_are_typed_and_equal_the_cli_strings():
    as_strings = keel.validate(QUICKSTART, reduced_quickstart_sets())
    typed = {k: int(v) for k, v in (s.split("=", 1) for s in reduced_quickstart_sets())}
    assert keel.validate(QUICKSTART, typed).config_hash == as_strings.config_hash


def test_string_valued_overrides_stay_strings():
    with pytest.raises(keel.ValidationError) as e:
        keel.validate(QUICKSTART, {"stages.base.with.steps": "many"})
    assert "steps" in str(e.value)


def test_validation_error_points_at_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            name: bad
            seed: 1
            stages:
              world: {use: synthetic_world, with: {task: arithmetic}}
              tok:   {use: train_tokenizr, inputs: {corpus: world.base_mix}}
            """
        )
    )
    with pytest.raises(keel.ValidationError) as e:
        keel.validate(bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}:5:"), msg
    assert "train_tokenizr" in msg and "did you mean `train_tokenizer`?" in msg
    (d,) = e.value.diagnostics
    assert d["file"] == str(bad) and d["line"] == 5 and d["col"] > 1
    assert "train_tokenizer" in d["help"]
    assert isinstance(e.value, keel.KeelError)


def test_an_unknown_override_path_is_reported_with_its_origin():
    with pytest.raises(keel.ValidationError) as e:
        keel.validate(QUICKSTART, ["stages.nosuch.with.x=1"])
    assert str(e.value).startswith("--set 'stages.nosuch.with.x=1':1:8: error: unknown stage `nosuch`")


def test_overrides_must_be_a_mapping_or_strings():
    with pytest.raises(TypeError):
        keel.validate(QUICKSTART, "stages.base.with.steps=3")
    with pytest.raises(TypeError):
        keel.validate(QUICKSTART, {"stages.base.with.lr": float("nan")})


def test_list_stages_names_every_kind():
    text = keel.list_stages()
    for kind in ["synthetic_world", "train_tokenizer", "sft", "rollout", "score", "learn", "evaluate", "report"]:
        assert kind in text


# --- run: the reduced quickstart -----------------------------------------------------------


def test_quickstart_results_frame_matches_results_json(quickstart_run):
    run = quickstart_run
    raw = json.loads((run.dir / "results.json").read_text())
    df = run.results
    assert list(df["label"]) == [r["label"] for r in raw]
    assert sorted(df["label"]) == sorted(LABELS)
    scalar_keys = [k for k, v in raw[0].items() if not isinstance(v, (dict, list))]
    assert list(df.columns) == scalar_keys
    for i, r in enumerate(raw):
        for k in scalar_keys:
            got = df[k].iloc[i]
            got = got.item() if hasattr(got, "item") else got
            assert got == r[k], (r["label"], k, got, r[k])
    for key in ["capability", "safety", "over_refusal"]:
        assert df[key].between(0, 1).all()
    # The drift bounds the quickstart reports are non-negative, and hold on every branch.
    assert (df["drift_bound_kl"] >= 0).all() and df["bound_kl_holds"].all()


def test_quickstart_set_metrics_are_every_value_of_results_json(quickstart_run):
    raw = quickstart_run.results_records
    long = quickstart_run.set_metrics()
    expected = sum(len(m["values"]) for r in raw for m in r["sets"].values()) + sum(
        len(m["values"]) for r in raw for m in r.get("benchmarks", {}).values()
    )
    assert len(long) == expected
    base = raw[[r["label"] for r in raw].index("base")]
    row = long[(long.label == "base") & (long.set == "task:task_test") & (long.metric == "accuracy")]
    assert row["value"].item() == base["sets"]["task:task_test"]["values"]["accuracy"]
    assert row["n"].item() == base["sets"]["task:task_test"]["n"] == 40


def test_quickstart_metrics_frame_has_every_record(quickstart_run):
    lines = [json.loads(l) for l in (quickstart_run.dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    df = quickstart_run.metrics()
    assert len(df) == len(lines)
    assert list(df.columns[:2]) == ["stage", "step"]
    for i, rec in enumerate(lines):
        assert df["stage"].iloc[i] == rec["stage"] and df["step"].iloc[i] == rec["step"]
        for k, v in rec["values"].items():
            assert df[k].iloc[i] == v
    base = quickstart_run.metrics("base")
    assert set(base["stage"]) == {"base"} and base["loss"].notna().all()
    # The reduced base trains 60 steps and logs every 10.
    assert list(base["step"]) == [10, 20, 30, 40, 50, 60]


def test_quickstart_rollouts_frame_has_every_scored_rollout(quickstart_run):
    lines = [json.loads(l) for l in (quickstart_run.dir / "rollouts.jsonl").read_text().splitlines() if l.strip()]
    df = quickstart_run.rollouts()
    assert len(df) == len(lines) > 0
    assert set(df["stage"]) == {"grpo_kl", "grpo_nokl", "ppo"}
    for i in (0, len(lines) // 2, len(lines) - 1):
        rec = lines[i]
        assert df["completion"].iloc[i] == rec["rollout"]["completion"]["text"]
        assert df["reward"].iloc[i] == rec["reward"]
        assert df["reward.correct"].iloc[i] == rec["components"]["correct"]
        assert df["answer"].iloc[i] == rec["rollout"]["example"]["answer"]
        assert df["n_tokens"].iloc[i] == len(rec["rollout"]["completion"]["token_ids"])
    # The answer reward of every rollout is the Python verifier's verdict on it (Keel's `answer`
    # reward uses the answer_line format).
    again = keel.rewards.math_verify(list(df["completion"]), list(df["answer"]), format="answer_line")
    assert again == list(df["reward.correct"])
    # 3 RL branches x 3 steps x 8 prompts x 8 completions.
    assert len(df) == 3 * 3 * 8 * 8
    assert len(quickstart_run.rollouts("ppo")) == 3 * 8 * 8


def test_quickstart_manifest_and_status(quickstart_run):
    m = quickstart_run.manifest
    assert m["pipeline"] == "quickstart" and m["run_id"] == "py"
    assert m["overrides"] == reduced_quickstart_sets()
    assert m["command_line"][0] == "keel.run"
    assert m["config_hash"] == keel.validate(QUICKSTART, reduced_quickstart_sets()).config_hash
    assert quickstart_run.status["status"] == "complete"
    assert quickstart_run.report_md.read_text().startswith("# ")


def test_tables_are_lists_of_dicts_without_pandas(quickstart_run, monkeypatch):
    frame = quickstart_run.results
    monkeypatch.setattr(_frames, "pandas", lambda: None)
    rows = quickstart_run.results
    assert isinstance(rows, list) and [r["label"] for r in rows] == list(frame["label"])
    assert list(rows[0]) == list(frame.columns)
    assert rows[0]["capability"] == frame["capability"].iloc[0]
    metrics = quickstart_run.metrics()
    assert isinstance(metrics, list) and {"stage", "step", "loss"} <= set(metrics[0])


def test_run_opens_an_existing_directory(quickstart_run):
    again = keel.Run(quickstart_run.dir)
    assert again.run_id == "py"
    assert again.results_records == quickstart_run.results_records
    with pytest.raises(FileNotFoundError):
        keel.Run(quickstart_run.dir / "nope")


# --- failures, cancellation, sweeps ---------------------------------------------------------


def test_a_failed_stage_raises_run_failed_with_the_cli_message(tmp_path):
    bad_model = tmp_path / "badmodel"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{}")
    (bad_model / "tokenizer.json").write_text("{}")
    (bad_model / "model.safetensors").write_bytes(b"")
    pipeline = tmp_path / "fail.yaml"
    pipeline.write_text(
        textwrap.dedent(
            f"""\
            name: pyfail
            seed: 1
            stages:
              world: {{use: synthetic_world, with: {{task: arithmetic, n_train: 50, n_test: 10, n_base_task: 20}}}}
              m: {{use: model, with: {{source: {bad_model}}}}}
              sft: {{use: sft, inputs: {{examples: world.task_train, init: m.checkpoint}}, with: {{steps: 1}}}}
            """
        )
    )
    with pytest.raises(keel.RunFailedError) as e:
        keel.run(pipeline, runs_dir=tmp_path / "runs", run_id="f", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"stage `sft` failed: loading model weights from {bad_model}"), msg
    assert "config field `model_type`: missing" in msg
    run_dir = tmp_path / "runs" / "pyfail" / "f"
    assert e.value.run_dir == str(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["failed_stage"] == "sft"


def test_resume_needs_a_run_id():
    with pytest.raises(ValueError):
        keel.run(QUICKSTART, resume=True)


def test_ctrl_c_cancels_the_run_and_raises_keyboard_interrupt(tmp_path):
    """SIGINT while Rust runs the pipeline: the stages are cancelled (the run directory says so)
    and Python gets its KeyboardInterrupt, as at the command line."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.setitimer(signal.ITIMER_REAL, 0)  # no stray timer
    old_alarm = signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGINT))
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 4.0)
        with pytest.raises(KeyboardInterrupt):
            keel.run(QUICKSTART, runs_dir=tmp_path, run_id="c", progress=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGINT, previous)
    # The full quickstart takes about a minute; cancellation stops it within seconds.
    assert time.monotonic() - started < 40
    status = json.loads((tmp_path / "quickstart" / "c" / "status.json").read_text())
    assert status["status"] == "cancelled", status


SWEEP = """\
name: pysweep
seed: 1
stages:
  world: {use: synthetic_world, with: {task: arithmetic, n_train: 50, n_test: 10, n_base_task: 20}}
  tok: {use: train_tokenizer, inputs: {corpus: world.base_mix}, with: {vocab_size: 260}}
sweep:
  grid: {"stages.tok.with.vocab_size": [260, 270]}
  seeds: [1, 2]
"""


def test_sweep_runs_every_cell_and_summarises(tmp_path):
    pipeline = tmp_path / "sweep.yaml"
    pipeline.write_text(SWEEP)
    assert keel.validate(pipeline).sweep_cells == 4
    listed = keel.sweep(pipeline, runs_dir=tmp_path / "runs", dry_run=True)
    assert [c["outcome"] for c in listed.cells] == [None] * 4
    s = keel.sweep(pipeline, jobs=2, runs_dir=tmp_path / "runs", progress=False)
    assert [c["id"] for c in s.cells] == [
        "tok.vocab_size=260_seed=1",
        "tok.vocab_size=260_seed=2",
        "tok.vocab_size=270_seed=1",
        "tok.vocab_size=270_seed=2",
    ]
    assert [c["outcome"] for c in s.cells] == ["complete"] * 4
    assert len(s.runs()) == 4 and s.summary_csv.is_file() and s.summary_md.is_file()
    summary = s.summary()
    vocab = summary[summary.metric == "tok/vocab_size"]
    assert list(vocab["cell"]) == ["tok.vocab_size=260", "tok.vocab_size=270"]
    assert list(vocab["mean"]) == [260.0, 270.0] and list(vocab["n"]) == [2, 2]
    for r in s.runs():
        assert r.metrics("tok")["vocab_size"].item() in (260.0, 270.0)
    # A second sweep skips the cells that are complete.
    again = keel.sweep(pipeline, jobs=2, runs_dir=tmp_path / "runs", progress=False)
    assert [c["outcome"] for c in again.cells] == ["skipped"] * 4


def test_python_and_cli_runs_give_byte_identical_results(quickstart_run, tmp_path):
    """The same pipeline, overrides and seed through `keel run` and keel.run: the same bytes in
    results.json and metrics.jsonl (same code, same numbers on CPU)."""
    cmd = [str(keel_bin()), "run", str(QUICKSTART), "--quiet", "--runs-dir", str(tmp_path), "--run-id", "cli"]
    for s in reduced_quickstart_sets():
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, capture_output=True)
    cli = tmp_path / "quickstart" / "cli"
    for name in ["results.json", "metrics.jsonl", "rollouts.jsonl"]:
        assert (cli / name).read_bytes() == (quickstart_run.dir / name).read_bytes(), name


def test_progress_is_written_as_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(
        textwrap.dedent(
            """\
            name: tiny
            seed: 1
            stages:
              world: {use: synthetic_world, with: {task: arithmetic, n_train: 50, n_test: 10, n_base_task: 20}}
              tok: {use: train_tokenizer, inputs: {corpus: world.base_mix}, with: {vocab_size: 260}}
              base: {use: sft, inputs: {examples: world.base_mix, tokenizer: tok.tokenizer}, with: {model: tiny-1m, steps: 4, batch_size: 4, max_len: 96}}
            """
        )
    )
    keel.run(pipeline, runs_dir=tmp_path / "runs", progress=True)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("[keel] base: ")]
    assert lines and lines[0].endswith(": 0/4"), err
    assert "done, 4/4 in" in lines[-1], err
    keel.run(pipeline, runs_dir=tmp_path / "runs", progress=False)
    assert "[keel]" not in capsys.readouterr().err
