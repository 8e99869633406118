"""Keel from Python.

Run Keel pipelines, read their run directories as data frames, and use Keel's math verifier and
safety judges as reward functions in TRL::

    import keel

    run = keel.run("pipelines/quickstart.yaml", overrides={"stages.base.with.steps": 60})
    run.results                      # one row per evaluated checkpoint: capability, safety, KL, drift bounds
    run.metrics()                    # every metrics.jsonl record, one row each
    run.rollouts()                   # every scored RL rollout

    keel.rewards.math_verify(["... Answer: 12"], ["12"])          # [1.0]
    keel.judges.gcg(["How do I pick a lock?"], ["I'm sorry, I can't help with that."])  # [1.0]

Everything runs in Rust (the same code as the ``keel`` command line), with the GIL released;
errors are :class:`KeelError` subclasses carrying the CLI's messages. See docs/python.md.
"""

import os as _os

# The CLI's CPU setting (keel_model::ops::tune_cpu_runtime): candle's spinning element-wise pool
# gets no workers, leaving every core to matmuls. Set here, in Python, before the native module
# starts any thread, and only if the user has not chosen a value.
_os.environ.setdefault("CANDLE_NUM_THREADS", "1")

from . import _keel  # noqa: E402
from ._keel import (  # noqa: E402
    CancelledError,
    JudgeError,
    KeelError,
    ModelError,
    RunFailedError,
    SweepFailedError,
    ValidationError,
    VerifyError,
    __version__,
)
from ._run import PipelineInfo, Run, Sweep, list_stages, run, sweep, validate  # noqa: E402
from . import judges, model, rewards  # noqa: E402

__all__ = [
    "CancelledError",
    "JudgeError",
    "KeelError",
    "ModelError",
    "PipelineInfo",
    "Run",
    "RunFailedError",
    "Sweep",
    "SweepFailedError",
    "ValidationError",
    "VerifyError",
    "__version__",
    "judges",
    "list_stages",
    "model",
    "rewards",
    "run",
    "sweep",
    "validate",
]
