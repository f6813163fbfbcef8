"""LiteRT-LM `.litertlm` files, written through Google's `litert-lm-builder` and read back.

The builder stamps a fresh UUID and creation time into every file, so two builds of the same
inputs differ in those bytes (unlike genapi's `.task` files). Sections start on 16 KiB
boundaries. The builder's `validate_metadata` refuses to build an LLM file without
`LlmMetadata`, which the engine would otherwise abort the whole process on.
"""

from __future__ import annotations

import io
import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

# Section kinds genapi reads (values of the header's AnySectionDataType).
TFLITE_MODEL, SP_TOKENIZER, LLM_METADATA, HF_TOKENIZER_ZLIB = 3, 4, 5, 6


def _builder():
    try:
        from litert_lm_builder import litertlm_builder
    except ImportError:
        raise NotImplementedError(
            "writing .litertlm files is not supported without litert-lm-builder: "
            "pip install litert-lm-builder==0.18.1"
        ) from None
    return litertlm_builder


def build_litertlm(
    stream: BinaryIO,
    *,
    model_path: str | os.PathLike,
    sentencepiece_model: bytes | None = None,
    tokenizer_json: str | None = None,
    llm_metadata: bytes,
) -> None:
    """Write a `.litertlm` to the seekable `stream`: model, tokenizer, LlmMetadata.

    Exactly one of `sentencepiece_model` and `tokenizer_json` is given.
    """
    if (sentencepiece_model is None) == (tokenizer_json is None):
        raise ValueError("give exactly one of sentencepiece_model and tokenizer_json")
    lib = _builder()
    with tempfile.TemporaryDirectory(prefix="genapi-litertlm-") as tmp:
        builder = lib.LitertLmFileBuilder()
        builder.add_tflite_model(str(model_path), lib.TfLiteModelType.PREFILL_DECODE)
        if sentencepiece_model is not None:
            tokenizer_path = Path(tmp, "tokenizer.model")
            tokenizer_path.write_bytes(sentencepiece_model)
            builder.add_sentencepiece_tokenizer(str(tokenizer_path))
        else:
            tokenizer_path = Path(tmp, "tokenizer.json")  # the builder wants this suffix
            tokenizer_path.write_text(tokenizer_json, encoding="utf-8")
            builder.add_hf_tokenizer(str(tokenizer_path))
        metadata_path = Path(tmp, "llm_metadata.pb")
        metadata_path.write_bytes(llm_metadata)
        builder.add_llm_metadata(str(metadata_path))
        builder.build(stream, validate_metadata=True)


def read_litertlm_sections(path: str | os.PathLike) -> dict[int, tuple[int, int]]:
    """Section kind -> (offset, size) of the first section of each kind in a `.litertlm`.

    Raises:
        ValueError: if the file is not a `.litertlm`.
    """
    _builder()  # a clear error if the package is missing
    from litert_lm_builder import litertlm_peek

    try:
        header = litertlm_peek.read_litertlm_header(str(path), io.StringIO())
    except ValueError as error:
        raise ValueError(f"{str(path)!r} is not a .litertlm file ({error})") from None
    sections = {}
    table = header.SectionMetadata()
    for i in range(table.ObjectsLength() if table is not None else 0):
        section = table.Objects(i)
        begin, end = int(section.BeginOffset()), int(section.EndOffset())
        sections.setdefault(int(section.DataType()), (begin, end - begin))
    return sections


def decode_hf_tokenizer(data: bytes) -> str:
    """The `tokenizer.json` text of an HF_Tokenizer_Zlib section (8-byte size, then zlib)."""
    size = int.from_bytes(data[:8], "little")
    text = zlib.decompress(data[8:])
    if len(text) != size:
        raise ValueError("the tokenizer section is damaged (its size does not match)")
    return text.decode("utf-8")
