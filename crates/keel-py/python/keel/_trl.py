"""TRL's reward-function calling convention.

``GRPOTrainer`` calls each reward function as ``f(prompts=..., completions=..., completion_ids=...,
**dataset_columns, trainer_state=...)``. Prompts and completions are strings for a standard
dataset and lists of ``{"role": ..., "content": ...}`` messages for a conversational one; the
function returns one float per completion (None: no reward for that one). These helpers turn
either form into the text Keel scores.
"""

from typing import Any, Dict, List, Optional, Sequence


def _content(message: Any) -> str:
    if isinstance(message, dict):
        content = message.get("content", "")
        if isinstance(content, list):
            # Multimodal content parts: keep the text parts.
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return "" if content is None else str(content)
    raise TypeError(f"a chat message is a dict with 'role' and 'content', not {message!r}")


def completion_text(completion: Any) -> str:
    """The text of a completion: the string itself, or, for a conversational completion (a list
    of messages), the content of its last assistant message (its last message if none says
    ``assistant``)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion)
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        for m in reversed(completion):
            if isinstance(m, dict) and m.get("role") == "assistant":
                return _content(m)
        return _content(completion[-1])
    raise TypeError(f"a completion is a string or a list of chat messages, not {type(completion).__name__}")


def prompt_text(prompt: Any) -> str:
    """The user's text of a prompt: the string itself, or the content of the last user message
    of a conversational prompt (what Keel's safety classifiers read)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user":
                return _content(m)
        return _content(prompt[-1]) if prompt else ""
    if isinstance(prompt, dict):
        return _content(prompt)
    raise TypeError(f"a prompt is a string or a list of chat messages, not {type(prompt).__name__}")


def texts(items: Sequence[Any], convert: Any) -> List[str]:
    """``convert`` applied to each item, refusing a bare string (a common slip: one completion
    passed where a list is expected)."""
    if isinstance(items, str):
        raise TypeError("pass a list of texts, not one string")
    return [convert(x) for x in items]


def column(kwargs: Dict[str, Any], names: Sequence[str]) -> Optional[Sequence[Any]]:
    """The first of ``names`` present in ``kwargs`` (a dataset column TRL passed), or None."""
    for n in names:
        if n in kwargs and kwargs[n] is not None:
            return kwargs[n]
    return None
