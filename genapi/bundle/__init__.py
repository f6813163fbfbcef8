"""Bundles: a converted model, its tokenizer and generation metadata in one file.

- `.task`: MediaPipe LLM Inference (also run by LiteRT-LM); SentencePiece tokenizers only.
- `.litertlm`: LiteRT-LM; SentencePiece or Hugging Face `tokenizer.json`.

`write_bundle` writes either from a `.tflite` and a `Tokenizer`; `read_bundle` locates and
checks the parts of an existing file; `genapi.bundle.engine` runs one in Google's engine.
"""

from genapi.bundle.bundles import (
    BundleContents,
    atomic_output,
    bundle_kind,
    extracted_model,
    read_bundle,
    write_bundle,
)
from genapi.bundle.metadata import (
    BundleMetadata,
    MetadataOverrides,
    PromptTemplate,
    metadata_from_tokenizer,
    prompt_template_from_chat_template,
)
from genapi.bundle.model_check import ModelShape, check_llm_model

__all__ = [
    "BundleContents",
    "BundleMetadata",
    "MetadataOverrides",
    "ModelShape",
    "PromptTemplate",
    "atomic_output",
    "bundle_kind",
    "check_llm_model",
    "extracted_model",
    "metadata_from_tokenizer",
    "prompt_template_from_chat_template",
    "read_bundle",
    "write_bundle",
]
