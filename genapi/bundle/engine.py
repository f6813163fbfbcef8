"""Run bundles in Google's LiteRT-LM engine (`litert_lm`, from the `litert-lm-api` wheel).

The engine aborts the whole process on a file it cannot use, so `open_engine` checks the
bundle with `read_bundle` first. Tests still run it in a child process.

What the engine does with a prompt (litert-lm-api 0.18.1): it tokenizes the text with the
bundled tokenizer, wraps it in the prompt template when asked to, prepends the start token
(`BundleMetadata.prompt_ids` reproduces this), prefills all tokens but the last and feeds the
last one to the first decode step. Streaming yields one text chunk per generated token.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from genapi.bundle.bundles import read_bundle

if TYPE_CHECKING:
    from genapi.sampling import SamplingConfig


def engine_available() -> bool:
    """Whether `litert_lm` (the `litert-lm-api` wheel) is installed."""
    return importlib.util.find_spec("litert_lm") is not None


def open_engine(path: str | os.PathLike, *, threads: int = 2) -> Any:
    """A `litert_lm.Engine` on the CPU for a bundle that passed `read_bundle`'s checks.

    Raises:
        FileNotFoundError / ValueError: if the bundle is missing or malformed.
        NotImplementedError: if `litert_lm` is not installed.
    """
    contents = read_bundle(path)
    if not engine_available():
        raise NotImplementedError(
            "running bundles in LiteRT-LM is not supported without litert-lm-api: "
            "pip install litert-lm-api==0.18.1"
        )
    import litert_lm

    if threads < 1:
        raise ValueError(f"threads={threads!r} must be >= 1")
    return litert_lm.Engine(str(contents.path), backend=litert_lm.Backend.CPU(thread_count=threads))


def sampler_config(sampling: SamplingConfig | None, *, vocab_size: int) -> Any:
    """genapi's `SamplingConfig` as a `litert_lm.SamplerConfig` (temperature 0: top_k 1)."""
    import litert_lm

    if sampling is None or sampling.temperature == 0:
        return litert_lm.SamplerConfig(top_k=1)
    return litert_lm.SamplerConfig(
        top_k=sampling.top_k or vocab_size,  # the engine's default would be greedy
        top_p=sampling.top_p if sampling.top_p is not None else 1.0,
        temperature=sampling.temperature,
        seed=sampling.seed,
    )


def engine_stream(
    engine: Any,
    prompt: str,
    *,
    max_new_tokens: int,
    chat: bool = True,
    sampling: SamplingConfig | None = None,
    vocab_size: int = 1,
) -> Iterator[str]:
    """Text chunks the engine generates for `prompt` (one per token), until a stop token.

    Args:
        engine: from `open_engine`.
        prompt: the user's message (`chat`) or the whole prompt.
        max_new_tokens: most tokens to generate.
        chat: wrap the prompt in the bundle's prompt template.
        sampling: greedy by default.
        vocab_size: the model's vocabulary (the top-k bound when sampling without top_k).
    """
    session = engine.create_session(
        apply_prompt_template=chat,
        sampler_config=sampler_config(sampling, vocab_size=vocab_size),
        max_output_tokens=max_new_tokens,
    )
    try:
        session.run_prefill([prompt])
        for response in session.run_decode_async():
            yield from response.texts
    finally:
        session.close()
