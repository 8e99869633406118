"""Model files: converting a GGUF file into a model directory Keel (and transformers) can load."""

import os
from typing import Any, Dict, Union

from . import _keel


def import_gguf(path: Union[str, "os.PathLike[str]"], out: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Converts the GGUF file ``path`` into the Hugging Face-layout directory ``out``
    (model.safetensors in f32, config.json, tokenizer.json, tokenizer_config.json with the chat
    template), as ``keel model import`` does. Files are written atomically.

    Returns the import report: gguf, out_dir, architecture, n_tensors, n_parameters,
    source_dtypes, vocab_size, tied_embeddings, has_chat_template, files, warnings. Raises
    :class:`keel.ModelError` for a file that is missing, malformed or of an unsupported
    architecture.
    """
    return _keel.import_gguf(os.fspath(path), os.fspath(out))


__all__ = ["import_gguf"]
