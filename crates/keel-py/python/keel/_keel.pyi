"""Type stubs of the native module ``keel._keel`` (crates/keel-py/src). Use the ``keel``
package's wrappers (keel.run, keel.rewards, keel.judges, keel.model), which document the
arguments; these are the raw functions they call."""

from typing import Any, Dict, List, Optional, final

__all__ = [
    "ANSWER_FORMATS",
    "CancelledError",
    "Judge",
    "JudgeError",
    "KeelError",
    "LEXICONS",
    "ModelError",
    "REWARD_MODES",
    "RunFailedError",
    "SpecJudge",
    "SweepFailedError",
    "ValidationError",
    "VerifyError",
    "answers_equivalent",
    "extract_answer",
    "import_gguf",
    "list_stages",
    "math_verify",
    "run",
    "sweep",
    "train_probe",
    "validate",
    "__version__",
]

__version__: str
ANSWER_FORMATS: List[str]
LEXICONS: List[str]
REWARD_MODES: List[str]

class KeelError(Exception):
    """Base class of every error raised by Keel."""

class ValidationError(KeelError):
    """A pipeline (or an override) is invalid; ``diagnostics`` lists every problem."""
    diagnostics: List[Dict[str, Any]]

class RunFailedError(KeelError):
    """A run did not complete; ``run_dir`` is its directory when one was created."""
    run_dir: str

class SweepFailedError(RunFailedError):
    """Some cells of a sweep failed; ``sweep`` is the keel.Sweep of the others."""
    sweep: Any

class CancelledError(KeelError):
    """A run or sweep was cancelled from outside; ``run_dir`` is a run's directory, ``sweep``
    the keel.Sweep of a cancelled sweep."""
    run_dir: str
    sweep: Any

class VerifyError(KeelError):
    """A math answer could not be verified and on_error='raise' was asked for."""

class JudgeError(KeelError):
    """A safety judge could not be built or failed on an input."""

class ModelError(KeelError):
    """A model file could not be read, converted or written."""

def validate(path: str, overrides: List[str] = ...) -> Dict[str, Any]: ...
def run(
    path: str,
    overrides: List[str] = ...,
    runs_dir: str = ...,
    run_id: Optional[str] = ...,
    resume: bool = ...,
    dry_run: bool = ...,
    progress: Optional[bool] = ...,
) -> Dict[str, Any]: ...
def sweep(
    path: str,
    overrides: List[str] = ...,
    jobs: int = ...,
    runs_dir: str = ...,
    dry_run: bool = ...,
    progress: Optional[bool] = ...,
) -> Dict[str, Any]: ...
def list_stages(markdown: bool = ...) -> str: ...
def math_verify(
    completions: List[str],
    answers: List[Optional[str]],
    format: str = ...,
    answer_after_think: bool = ...,
    on_error: str = ...,
) -> List[Optional[float]]: ...
def extract_answer(text: str, format: str = ...) -> Optional[str]: ...
def answers_equivalent(predicted: str, gold: str) -> bool: ...
def import_gguf(path: str, out: str) -> Dict[str, Any]: ...
def train_probe(
    encoder: str,
    texts: List[str],
    labels: List[bool],
    out: str,
    input: str = ...,
    trained_on: Optional[str] = ...,
    test_fraction: float = ...,
    seed: int = ...,
    l2: float = ...,
    threshold: float = ...,
) -> Dict[str, Any]: ...

@final
class Judge:
    """A keel-safety classifier: a refusal lexicon or an embedding probe."""
    @staticmethod
    def lexicon(name: str) -> "Judge": ...
    @staticmethod
    def probe(
        directory: str,
        encoder: Optional[str] = ...,
        input: Optional[str] = ...,
        refusal_lexicon: Optional[str] = ...,
        name: Optional[str] = ...,
    ) -> "Judge": ...
    @property
    def name(self) -> str: ...
    def verdicts(
        self, prompts: List[str], responses: List[str], safety: Optional[List[Optional[str]]] = ...
    ) -> List[Dict[str, Any]]: ...
    def rewards(
        self,
        prompts: List[str],
        responses: List[str],
        safety: Optional[List[Optional[str]]] = ...,
        mode: Optional[str] = ...,
    ) -> List[float]: ...
    def p_unsafe(self, texts: List[str]) -> List[float]: ...

@final
class SpecJudge:
    """A judge built from a pipeline `judges:` entry (keel-safety's JudgeSpec, as JSON)."""
    def __new__(cls, spec_json: str) -> "SpecJudge": ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    def judge(
        self, prompts: List[str], responses: List[str], safety: Optional[List[Optional[str]]] = ...
    ) -> List[Dict[str, Any]]: ...
    def rewards(
        self, prompts: List[str], responses: List[str], safety: Optional[List[Optional[str]]] = ...
    ) -> List[Optional[float]]: ...
    def stats(self) -> Dict[str, int]: ...
