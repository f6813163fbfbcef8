"""Torch-free runtime: generate text from a genapi `.tflite` with ai-edge-litert."""

from genapi.runtime.generator import GenerationStats, LiteRTGenerator, prompt_ids

__all__ = ["GenerationStats", "LiteRTGenerator", "prompt_ids"]
