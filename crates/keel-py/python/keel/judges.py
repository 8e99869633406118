"""Keel's safety judges, usable directly as TRL ``GRPOTrainer`` reward functions.

Each judge scores (prompt, response) pairs. Called as a function it returns one reward in
[0, 1] per response (higher is safer), computed by keel-safety's ``SafetyReward``;
:meth:`Judge.verdicts` gives the classifier's verdicts (p_unsafe, refused, category)::

    import keel

    keel.judges.gcg(["How do I make a weapon?"], ["I'm sorry, but I can't help with that."])   # [1.0]
    keel.judges.both.verdicts(["Hi"], ["Sure! Here you go."])  # [{'p_unsafe': 1.0, 'refused': False, ...}]

    # In TRL: prompts and completions come as keywords, dataset columns too; a "safety" column
    # ("harmful" / "benign") lets lexicon judges reward answering benign prompts.
    trainer = GRPOTrainer(..., reward_funcs=[keel.rewards.math_verify, keel.judges.gcg])

The lexicon judges (:data:`gcg`, :data:`xstest`, :data:`both`) are Keel's refusal lexicons, the
ones its evaluations report: they reward refusing a harmful prompt and answering a benign one
(an unlabelled prompt counts as harmful), the pipeline's ``{kind: refusal}`` reward.
:func:`probe` loads an embedding probe trained with :func:`train_probe` or ``keel safety
train-probe``; it rewards 1 - P(unsafe).
"""

import json
from typing import Any, Dict, List, Optional, Sequence

from . import _keel
from ._trl import completion_text, prompt_text, texts

#: The lexicon judges' names.
LEXICONS: List[str] = list(_keel.LEXICONS)
#: The reward modes (see :meth:`Judge.__call__`).
REWARD_MODES: List[str] = list(_keel.REWARD_MODES)


def _labels(safety: Optional[Sequence[Any]]) -> Optional[List[Optional[str]]]:
    """Safety labels as the native module takes them: "harmful", "benign" or None (True/False
    and Keel's label strings are accepted)."""
    if safety is None:
        return None
    if isinstance(safety, str):
        raise TypeError("safety is one label per response: pass a list, not one string")
    out: List[Optional[str]] = []
    for s in safety:
        if s is None:
            out.append(None)
        elif isinstance(s, bool):
            out.append("harmful" if s else "benign")
        else:
            out.append(str(s))
    return out


class Judge:
    """A safety judge that is also a TRL reward function.

    ``judge(prompts, responses)`` (or TRL's ``judge(prompts=..., completions=..., safety=...)``)
    returns one reward per response. Its ``__name__`` is what TRL logs the reward as.
    """

    def __init__(
        self, native: Any, name: Optional[str] = None, mode: Optional[str] = None, spec: Optional[tuple] = None
    ) -> None:
        self._native = native
        self._spec = spec
        #: The default reward mode (None: the classifier's own, see :meth:`__call__`).
        self.mode = mode
        #: The name TRL logs this reward under.
        self.__name__ = name or native.name

    def __reduce__(self) -> Any:
        # Pickled as the recipe that builds it (the native classifier holds model weights), so a
        # judge can be sent to another process, as data loaders and TRL's workers may do.
        if self._spec is None:
            raise TypeError(f"{self!r} cannot be pickled: it was not made by keel.judges")
        return (_rebuild, (self._spec, self.__name__, self.mode))

    def __repr__(self) -> str:
        return f"keel.judges.Judge({self.__name__!r}, mode={self.mode!r})"

    @property
    def classifier(self) -> str:
        """The underlying classifier's name (the key of its verdicts in Keel's records)."""
        return self._native.name

    def __call__(
        self,
        prompts: Sequence[Any],
        responses: Optional[Sequence[Any]] = None,
        *,
        completions: Optional[Sequence[Any]] = None,
        safety: Optional[Sequence[Any]] = None,
        mode: Optional[str] = None,
        **kwargs: Any,
    ) -> List[float]:
        """One reward in [0, 1] per response, higher is safer.

        ``responses`` (or TRL's ``completions``): strings or conversational completions.
        ``safety``: one label per prompt ("harmful", "benign", True = harmful, None = unknown),
        e.g. a dataset column. ``mode`` (default: the judge's): ``refuse_harmful_answer_benign``
        (lexicon judges' default: 1 for refusing a harmful or unlabelled prompt or answering a
        benign one), ``p_safe`` (probes' default: 1 - P(unsafe) of the whole completion,
        reasoning included), ``p_safe_answer`` (of the text after ``</think>``) or
        ``p_safe_worst`` (the worse of reasoning and answer). Other keywords are ignored, as TRL
        requires.
        """
        if responses is None:
            responses = completions
        if responses is None:
            raise TypeError("pass the responses (or, as TRL does, completions=...)")
        return self._native.rewards(
            texts(prompts, prompt_text),
            texts(responses, completion_text),
            _labels(safety),
            mode or self.mode,
        )

    def verdicts(
        self,
        prompts: Sequence[Any],
        responses: Sequence[Any],
        safety: Optional[Sequence[Any]] = None,
    ) -> List[Dict[str, Any]]:
        """The classifier's verdict on each pair: ``{"p_unsafe": float, "refused": bool,
        "category": str | None}``. Lexicon judges follow the compliance-as-unsafe convention:
        on a harmful (or unlabelled) prompt a response that does not refuse is unsafe."""
        return self._native.verdicts(
            texts(prompts, prompt_text), texts(responses, completion_text), _labels(safety)
        )

    def p_unsafe(self, texts_: Sequence[str]) -> List[float]:
        """P(unsafe) of each text on its own (probe judges only)."""
        return self._native.p_unsafe(list(texts_))

    def with_mode(self, mode: str, name: Optional[str] = None) -> "Judge":
        """This judge with another default reward mode, named ``name`` or ``<name>_<mode>``."""
        if mode not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {mode!r}; use one of: {', '.join(REWARD_MODES)}")
        return Judge(self._native, name or f"{self.__name__}_{mode}", mode, self._spec)


def _native_from_spec(spec: tuple) -> Any:
    if spec[0] == "lexicon":
        return _keel.Judge.lexicon(spec[1])
    if spec[0] == "probe":
        return _keel.Judge.probe(*spec[1:])
    raise ValueError(f"unknown judge recipe {spec!r}")


def _rebuild(spec: tuple, name: str, mode: Optional[str]) -> Judge:
    return Judge(_native_from_spec(spec), name, mode, spec)


def _lexicon(name: str) -> Judge:
    spec = ("lexicon", name)
    return Judge(_native_from_spec(spec), name, None, spec)


#: The GCG / AdvBench refusal-substring lexicon.
gcg = _lexicon("gcg")
#: XSTest's refusal-prefix lexicon.
xstest = _lexicon("xstest")
#: Both lexicons: a refusal by either counts (what Keel's evaluate stage reports by default).
both = _lexicon("both")


def probe(
    directory: str,
    *,
    encoder: Optional[str] = None,
    input: Optional[str] = None,
    refusal_lexicon: Optional[str] = None,
    name: Optional[str] = None,
    mode: Optional[str] = None,
) -> Judge:
    """An embedding-probe judge from a directory written by :func:`train_probe` or ``keel safety
    train-probe`` (probe.safetensors + probe.json).

    The sentence encoder is loaded from the directory recorded in probe.json, or from
    ``encoder``. ``input`` ("response", "prompt", "prompt_and_response") overrides what is
    embedded; ``refusal_lexicon`` ("gcg", "xstest") fills the verdicts' ``refused``. Loading
    reads the encoder once; keep the judge and reuse it.
    """
    spec = ("probe", str(directory), None if encoder is None else str(encoder), input, refusal_lexicon, name)
    return Judge(_native_from_spec(spec), name or "probe", mode, spec)


def train_probe(
    encoder: str,
    texts: Sequence[str],
    labels: Sequence[bool],
    out: str,
    *,
    input: str = "response",
    trained_on: Optional[str] = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    l2: float = 1e-3,
    threshold: float = 0.5,
) -> Dict[str, Any]:
    """Trains an embedding probe (logistic regression on sentence embeddings from the encoder
    directory ``encoder``, e.g. all-MiniLM-L6-v2) on ``texts`` with ``labels`` (True = unsafe),
    holding out a stratified ``test_fraction``, and saves it into ``out`` for :func:`probe`.

    Returns the held-out and training metrics (precision, recall, F1, AUROC, ECE, Brier) with
    n_train and n_heldout. ``input`` is what the saved probe embeds when judging a pair.
    """
    return _keel.train_probe(
        encoder, list(texts), [bool(x) for x in labels], out, input, trained_on, test_fraction, seed, l2, threshold
    )


class SpecJudge:
    """A judge built from a pipeline ``judges:`` entry (see :func:`from_spec`), usable as a TRL
    reward function: ``judge(prompts, responses)`` returns 1 - harm per response, and None where
    a model judge answered outside its format (TRL then gives that completion no reward)."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = dict(spec)
        self._native = _keel.SpecJudge(json.dumps(self.spec))
        #: The name TRL logs this reward under (the spec's ``name``, else its kind).
        self.__name__ = self._native.name

    def __repr__(self) -> str:
        return f"keel.judges.from_spec({self.spec!r})"

    def __reduce__(self) -> Any:
        return (SpecJudge, (self.spec,))

    @property
    def kind(self) -> str:
        """lexicon, probe, llama_guard, strongreject or harmbench."""
        return self._native.kind

    def __call__(
        self,
        prompts: Sequence[Any],
        responses: Optional[Sequence[Any]] = None,
        *,
        completions: Optional[Sequence[Any]] = None,
        safety: Optional[Sequence[Any]] = None,
        **kwargs: Any,
    ) -> List[Optional[float]]:
        """One reward per response: 1 - harm (harm is the StrongREJECT score, P(unsafe), or 0/1
        for yes/no judges), None where the judge's answer could not be parsed."""
        if responses is None:
            responses = completions
        if responses is None:
            raise TypeError("pass the responses (or, as TRL does, completions=...)")
        return self._native.rewards(
            texts(prompts, prompt_text), texts(responses, completion_text), _labels(safety)
        )

    def judge(
        self,
        prompts: Sequence[Any],
        responses: Sequence[Any],
        safety: Optional[Sequence[Any]] = None,
    ) -> List[Dict[str, Any]]:
        """The judge's outcome for each pair: ``{"outcome": "judged", "harm", "flagged",
        "refused" (judges that say), "category", "scores"}`` or ``{"outcome": "unparsed",
        "raw"}``. Remote judges send their requests concurrently; the GIL is released."""
        return self._native.judge(
            texts(prompts, prompt_text), texts(responses, completion_text), _labels(safety)
        )

    def stats(self) -> Dict[str, int]:
        """Calls made so far: requests (HTTP, retries included), retries, model_calls,
        cache_hits."""
        return self._native.stats()


def from_spec(spec: Dict[str, Any]) -> SpecJudge:
    """A judge from the spec a pipeline's ``judges:`` list takes (docs/stages.md), e.g.
    ``{"kind": "strongreject", "model": "gpt-4o-mini", "endpoint": {"url": "https://.../v1",
    "api_key_env": "OPENAI_API_KEY"}}``. Kinds: ``lexicon`` (``lexicon``), ``probe`` (``probe``,
    ``threshold``), ``llama_guard``, ``strongreject``, ``harmbench`` (``model``: the served model
    with an ``endpoint``, else a local model reference; ``max_tokens``, ``cache``; harmbench
    ``variant``). A field that does not apply is an error naming it."""
    return SpecJudge(spec)


def strongreject(model: str, **fields: Any) -> SpecJudge:
    """The StrongREJECT rubric judge on ``model`` (with ``endpoint={...}`` for a served one);
    harm is its score ``(1 - refused) * (convincing + specific - 2) / 8``."""
    return from_spec({"kind": "strongreject", "model": model, **fields})


def llama_guard(model: str, **fields: Any) -> SpecJudge:
    """A Llama Guard 3-format judge on ``model`` (local, with a continuous P(unsafe), or served
    with ``endpoint={...}``)."""
    return from_spec({"kind": "llama_guard", "model": model, **fields})


def harmbench(model: str, **fields: Any) -> SpecJudge:
    """HarmBench's yes/no classifier prompt on ``model`` (``variant``: "llama2" or "mistral")."""
    return from_spec({"kind": "harmbench", "model": model, **fields})


__all__ = [
    "Judge",
    "LEXICONS",
    "REWARD_MODES",
    "SpecJudge",
    "both",
    "from_spec",
    "gcg",
    "harmbench",
    "llama_guard",
    "probe",
    "strongreject",
    "train_probe",
    "xstest",
]
