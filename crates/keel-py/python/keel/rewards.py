"""Keel's verifiable rewards, usable directly as TRL ``GRPOTrainer`` reward functions.

:func:`math_verify` is the reward of Keel's ``{kind: answer}`` pipeline component (keel-rewards'
``MathReward``): the final answer is extracted from each completion by a convention
(``format``), compared with the gold answer after LaTeX normalisation, numerically within a
tolerance, element-wise for tuples and intervals, or as expressions, and scored 1.0 or 0.0::

    from trl import GRPOConfig, GRPOTrainer
    import keel

    # dataset columns: "prompt" and "answer" (the gold answer, e.g. "72")
    trainer = GRPOTrainer(model=..., reward_funcs=keel.rewards.math_verify, train_dataset=dataset, ...)

    # another extraction convention, with a name TRL can log:
    gsm8k = keel.rewards.math_reward("gsm8k_strict")
"""

from typing import Any, List, Optional, Sequence

from . import _keel
from ._trl import column, completion_text, texts

#: The extraction conventions ``format=`` accepts: ``gsm8k_strict`` (GSM8K's ``#### N``),
#: ``gsm8k_flexible`` (the last number), ``boxed`` (MATH's last ``\\boxed{}``), ``answer_line``
#: (Keel's synthetic tasks: the last ``Answer: N``) and ``auto`` (the first of boxed,
#: ``Answer:``, ``####`` and last number that finds something).
FORMATS: List[str] = list(_keel.ANSWER_FORMATS)

#: Dataset columns :func:`math_verify` reads the gold answers from when ``answers`` is not given.
ANSWER_COLUMNS = ("answer", "answers")


def _gold(a: Any) -> Optional[str]:
    if a is None:
        return None
    if isinstance(a, float) and a.is_integer():
        return str(int(a))
    return str(a)


def math_verify(
    completions: Sequence[Any],
    answers: Optional[Sequence[Any]] = None,
    format: str = "auto",
    *,
    answer_after_think: bool = True,
    on_error: str = "zero",
    **kwargs: Any,
) -> List[Optional[float]]:
    """1.0 for each completion whose final answer equals its gold answer, else 0.0.

    ``completions``: strings, or TRL's conversational completions (lists of chat messages; the
    last assistant message is scored). ``answers``: one gold answer per completion (numbers are
    written as text; None gives None, TRL's "no reward" for that completion); when not given, the
    dataset column ``answer`` that TRL passes as a keyword is used. ``format``: one of
    :data:`FORMATS`. With ``answer_after_think`` (default) only the text after ``</think>`` counts,
    so numbers in a reasoning trace earn nothing. ``on_error``: ``"zero"`` scores an answer that
    cannot be verified in time (or is over the size limit) 0.0, as in training; ``"raise"`` raises
    :class:`keel.VerifyError`. Other keyword arguments (``prompts``, ``completion_ids``,
    ``trainer_state``, other columns) are accepted and ignored, as TRL requires.
    """
    if answers is None:
        answers = column(kwargs, ANSWER_COLUMNS)
        if answers is None:
            raise TypeError(
                "math_verify needs the gold answers: pass answers=[...] or give the dataset an "
                f"'answer' column (TRL passes it as a keyword); got keywords {sorted(kwargs)}"
            )
    if isinstance(answers, str):
        raise TypeError("answers is one gold answer per completion: pass a list, not one string")
    return _keel.math_verify(
        texts(completions, completion_text),
        [_gold(a) for a in answers],
        format,
        answer_after_think,
        on_error,
    )


class MathReward:
    """A :func:`math_verify` reward function with fixed settings (made by :func:`math_reward`).

    An object rather than a closure so that it pickles (TRL and multiprocessing data loaders may
    send reward functions to other processes) and carries the ``__name__`` TRL logs it under.
    """

    def __init__(self, format: str, answer_column: str, answer_after_think: bool, on_error: str, name: str) -> None:
        self.format = format
        self.answer_column = answer_column
        self.answer_after_think = answer_after_think
        self.on_error = on_error
        self.__name__ = name

    def __repr__(self) -> str:
        return f"keel.rewards.math_reward({self.format!r}, answer_column={self.answer_column!r}, name={self.__name__!r})"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> List[Optional[float]]:
        """One reward per completion, the gold answers read from the dataset column."""
        answers = kwargs.get(self.answer_column)
        if answers is None:
            raise TypeError(
                f"this reward reads the gold answers from the dataset column {self.answer_column!r}, "
                f"which TRL did not pass; got keywords {sorted(kwargs)}"
            )
        return math_verify(
            completions,
            answers,
            self.format,
            answer_after_think=self.answer_after_think,
            on_error=self.on_error,
        )


def math_reward(
    format: str = "auto",
    *,
    answer_column: str = "answer",
    answer_after_think: bool = True,
    on_error: str = "zero",
    name: Optional[str] = None,
) -> MathReward:
    """A :func:`math_verify` reward function with fixed settings, for TRL's ``reward_funcs``.

    TRL logs each reward under its ``__name__``; the function returned is named ``name`` or
    ``math_verify_<format>``, and reads the gold answers from the dataset column
    ``answer_column``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown answer format {format!r}; use one of: {', '.join(FORMATS)}")
    if on_error not in ("zero", "raise"):
        raise ValueError(f"on_error must be 'zero' or 'raise', not {on_error!r}")
    return MathReward(format, answer_column, answer_after_think, on_error, name or f"math_verify_{format}")


def extract_answer(text: str, format: str = "auto") -> Optional[str]:
    """The final answer found in ``text`` by the convention ``format``, or None."""
    return _keel.extract_answer(text, format)


def answers_equivalent(predicted: str, gold: str) -> bool:
    """Whether two answers denote the same value (``"\\\\frac{1}{2}"`` and ``"0.5"`` do)."""
    return _keel.answers_equivalent(predicted, gold)


__all__ = ["ANSWER_COLUMNS", "FORMATS", "MathReward", "answers_equivalent", "extract_answer", "math_reward", "math_verify"]
