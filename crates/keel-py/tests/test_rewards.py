"""keel.rewards: the math verifier from Python agrees with the Rust tests' gold sets."""

import json
import pickle

import pytest

import keel
from keel import rewards

from conftest import data_dir, require_file


def _gsm8k_rows():
    path = require_file(data_dir() / "gsm8k" / "test.jsonl")
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def _perturb(n: str) -> str:
    """The gold number plus one, written as crates/keel-rewards/tests/datasets.rs writes it."""
    v = float(n) + 1.0
    return str(int(v)) if v.is_integer() else repr(v)


def test_gsm8k_gold_verifies_and_perturbation_fails():
    """The Python twin of keel-rewards' gsm8k_gold_verifies_and_perturbation_fails: on all 1,319
    GSM8K test items the reference solution verifies against its own `#### N` under the strict,
    flexible and auto formats, a gold answer off by one does not, and neither does a solution
    whose final number was changed."""
    rows = _gsm8k_rows()
    assert len(rows) == 1319, "GSM8K test split has 1,319 items"
    solutions = [r["answer"] for r in rows]
    golds = [rewards.extract_answer(s, "gsm8k_strict") for s in solutions]
    assert all(g is not None for g in golds)
    # The gold is the text after the first `####`, cleaned as lm-evaluation-harness does.
    assert golds[0] == "18"
    for fmt in ["gsm8k_strict", "gsm8k_flexible", "auto"]:
        got = rewards.math_verify(solutions, golds, format=fmt, on_error="raise")
        bad = [i for i, r in enumerate(got) if r != 1.0]
        assert not bad, f"{fmt}: gold did not verify on items {bad[:10]}"
    wrong = [_perturb(g) for g in golds]
    for fmt in ["gsm8k_strict", "gsm8k_flexible"]:
        got = rewards.math_verify(solutions, wrong, format=fmt, on_error="raise")
        bad = [i for i, r in enumerate(got) if r != 0.0]
        assert not bad, f"{fmt}: perturbed gold verified on items {bad[:10]}"
    tampered = [s.rsplit("####", 1)[0] + "#### " + w for s, w in zip(solutions, wrong)]
    assert rewards.math_verify(tampered, golds, format="gsm8k_strict") == [0.0] * len(rows)


def test_verify_end_to_end_golden_cases():
    """keel-rewards' tests/equivalence.rs verify_end_to_end, through Python."""
    cases = [
        ("boxed", "so $x = \\boxed{\\dfrac{1}{2}}$.", "0.5", 1.0),
        ("gsm8k_strict", "The answer is 18", "18", 0.0),
        ("gsm8k_flexible", "The answer is $1,018.", "1018", 1.0),
        ("answer_line", "Answer: 3\nhmm, no.\nAnswer: 4", "4", 1.0),
        ("auto", "Answer: 12", "12", 1.0),
    ]
    for fmt, text, gold, expected in cases:
        assert rewards.math_verify([text], [gold], format=fmt) == [expected], (fmt, text)
    assert rewards.extract_answer("so $x = \\boxed{\\dfrac{1}{2}}$.", "boxed") == "\\dfrac{1}{2}"
    assert rewards.extract_answer("The answer is 18", "gsm8k_strict") is None
    assert rewards.answers_equivalent("\\frac{1}{2}", "0.5")
    assert not rewards.answers_equivalent("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 2)")


def test_reasoning_numbers_do_not_count():
    text = "<think>maybe Answer: 5</think>Answer: 7"
    assert rewards.math_verify([text], ["5"], format="answer_line") == [0.0]
    assert rewards.math_verify([text], ["7"], format="answer_line") == [1.0]
    assert rewards.math_verify([text], ["5"], format="auto", answer_after_think=False) == [0.0]


def test_trl_calling_convention():
    """GRPOTrainer passes prompts, completions (strings or chat messages), completion_ids,
    every dataset column and trainer_state as keywords."""
    conversational = [
        [{"role": "assistant", "content": "3 + 4 = 7. Answer: 7"}],
        [{"role": "assistant", "content": "Answer: 8"}],
    ]
    got = rewards.math_verify(
        prompts=[[{"role": "user", "content": "3+4?"}]] * 2,
        completions=conversational,
        completion_ids=[[1, 2], [3]],
        answer=[7, "7"],
        trainer_state=None,
        log_extra=None,
    )
    assert got == [1.0, 0.0]
    # None gold: no reward for that completion (TRL's None).
    assert rewards.math_verify(["Answer: 1", "Answer: 2"], answer=["1", None]) == [1.0, None]
    with pytest.raises(TypeError, match="answer"):
        rewards.math_verify(["Answer: 1"], prompts=["p"])
    with pytest.raises(TypeError):
        rewards.math_verify("Answer: 1", ["1"])


def test_math_reward_has_a_name_trl_can_log_and_pickles():
    r = rewards.math_reward("gsm8k_strict")
    assert r.__name__ == "math_verify_gsm8k_strict"
    assert r(completions=["#### 4", "4"], answer=["4", "4"], prompts=["a", "b"]) == [1.0, 0.0]
    named = rewards.math_reward("boxed", answer_column="solution", name="boxed_ok")
    assert named.__name__ == "boxed_ok"
    assert named(completions=["\\boxed{3}"], solution=["3"]) == [1.0]
    back = pickle.loads(pickle.dumps(named))
    assert back.__name__ == "boxed_ok" and back(completions=["\\boxed{3}"], solution=["3"]) == [1.0]
    with pytest.raises(ValueError):
        rewards.math_reward("nope")


def test_errors_are_keel_errors_with_the_rust_messages():
    huge = "1" * 200_001
    # Default: an unverifiable answer scores 0, as in training.
    assert rewards.math_verify([huge], ["1"]) == [0.0]
    with pytest.raises(keel.VerifyError) as e:
        rewards.math_verify([huge], ["1"], on_error="raise")
    assert str(e.value) == (
        "reward `correct` on example `#0`: completion is 200001 characters, over the limit of 200000"
    )
    assert isinstance(e.value, keel.KeelError)
    with pytest.raises(ValueError, match="unknown answer format `latex`"):
        rewards.math_verify(["1"], ["1"], format="latex")
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        rewards.math_verify(["1", "2"], ["1"])
