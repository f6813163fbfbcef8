"""Write and read `.task` and `.litertlm` bundles: a prefill/decode model, its tokenizer and
its generation metadata, in one file an app loads with MediaPipe or LiteRT-LM."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from genapi.bundle import litertlm, protos, task
from genapi.bundle.metadata import BundleMetadata, MetadataOverrides, metadata_from_tokenizer
from genapi.bundle.model_check import ModelShape, check_llm_model, check_llm_model_bytes

if TYPE_CHECKING:
    from genapi.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

BundleKind = Literal["task", "litertlm"]
BUNDLE_SUFFIXES: dict[str, BundleKind] = {".task": "task", ".litertlm": "litertlm"}


def bundle_kind(path: str | os.PathLike) -> BundleKind | None:
    """ "task" or "litertlm" from the file name's suffix, else None."""
    return BUNDLE_SUFFIXES.get(Path(path).suffix.lower())


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` that replaces `path` on success and is removed on error.

    Raises:
        FileNotFoundError: if the output folder does not exist.
    """
    path = Path(path)
    folder = path.absolute().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {str(folder)!r} does not exist")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    temp_path = Path(temp)
    try:
        yield temp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_path, 0o666 & ~umask)  # mkstemp makes it private; a bundle is not
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def write_bundle(
    model_path: str | os.PathLike,
    tokenizer: Tokenizer,
    output: str | os.PathLike,
    *,
    metadata: BundleMetadata | None = None,
    overrides: MetadataOverrides | None = None,
) -> Path:
    """Bundle a prefill/decode `.tflite` with its tokenizer into a `.task` or `.litertlm`.

    The kind follows the output's suffix. The file is written atomically: on an error no
    output (and no temporary file) is left behind.

    Args:
        model_path: the `.tflite` (as `genapi convert` writes it).
        tokenizer: the checkpoint's tokenizer.
        output: the bundle path, ending in `.task` or `.litertlm`.
        metadata: the generation metadata; by default read from `tokenizer`.
        overrides: fields to set by hand on top of the tokenizer's (not with `metadata`).

    Returns:
        The path written.

    Raises:
        ValueError: for a bad suffix, a model that breaks the LiteRT-LM contract, a tokenizer
            the bundle kind cannot carry (byte-level BPE in a `.task`), or metadata that does
            not fit the model.
        FileNotFoundError: if the model or the output folder does not exist.
    """
    kind = bundle_kind(output)
    if kind is None:
        raise ValueError(f"bundle output {str(output)!r} must end in .task or .litertlm")
    if metadata is not None and overrides is not None:
        raise ValueError("pass metadata or overrides, not both")
    shape = check_llm_model(model_path)
    if tokenizer.vocab_size > shape.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's logits only "
            f"{shape.vocab_size}: they do not belong together"
        )
    if metadata is None:
        metadata = metadata_from_tokenizer(tokenizer, overrides=overrides)
    _check_metadata(metadata, shape)

    with atomic_output(output) as temp, open(temp, "wb") as stream:
        if kind == "task":
            _write_task(stream, model_path, tokenizer, metadata)
        else:
            _write_litertlm(stream, model_path, tokenizer, metadata, shape)
    logger.info("wrote %s (%s)", output, kind)
    return Path(output)


def _check_metadata(metadata: BundleMetadata, shape: ModelShape) -> None:
    ids = [metadata.start_token_id, *metadata.stop_token_ids]
    bad = [i for i in ids if i is not None and not 0 <= i < shape.vocab_size]
    if bad:
        raise ValueError(
            f"token ids {bad} are outside the model's vocabulary of {shape.vocab_size}"
        )
    if metadata.max_num_tokens is not None and metadata.max_num_tokens > shape.cache_len:
        raise ValueError(
            f"max tokens {metadata.max_num_tokens} exceeds the model's KV cache of "
            f"{shape.cache_len}; use at most {shape.cache_len} or convert with a larger "
            "--kv-cache-len"
        )


def _write_task(stream, model_path, tokenizer: Tokenizer, metadata: BundleMetadata) -> None:
    if tokenizer.kind != "sentencepiece":
        raise ValueError(
            f"a .task bundle carries only a SentencePiece tokenizer, and this model's is "
            f"{tokenizer.kind!r} (byte-level BPE has no SentencePiece equivalent with the same "
            "ids); write a .litertlm instead, which carries its tokenizer.json"
        )
    params = protos.llm_parameters_bytes(metadata, tokenizer)
    entries = task.task_entries(
        model_path=model_path,
        tokenizer_model=tokenizer.to_sentencepiece_model_bytes(),
        metadata=params,
    )
    task.write_stored_zip(stream, entries)


def _write_litertlm(
    stream, model_path, tokenizer: Tokenizer, metadata: BundleMetadata, shape: ModelShape
) -> None:
    llm_metadata = protos.llm_metadata_bytes(
        metadata, max_num_tokens=metadata.max_num_tokens or shape.cache_len
    )
    if tokenizer.kind == "sentencepiece":
        litertlm.build_litertlm(
            stream,
            model_path=model_path,
            sentencepiece_model=tokenizer.to_sentencepiece_model_bytes(),
            llm_metadata=llm_metadata,
        )
    else:
        litertlm.build_litertlm(
            stream,
            model_path=model_path,
            tokenizer_json=tokenizer.to_tokenizer_json(),
            llm_metadata=llm_metadata,
        )


@dataclass
class BundleContents:
    """What a bundle holds, located but not loaded (the model stays in the file)."""

    path: Path
    kind: BundleKind
    model_offset: int  # where the .tflite starts in the file
    model_size: int
    tokenizer_kind: Literal["sentencepiece", "tokenizer.json"]
    tokenizer_data: bytes  # the SentencePiece model, or the tokenizer.json text (UTF-8)
    metadata_data: bytes  # LlmParameters (.task) or LlmMetadata (.litertlm), serialized
    shape: ModelShape

    def tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer as a genapi `Tokenizer`.

        Raises:
            NotImplementedError: for a tokenizer.json genapi cannot run (not byte-level BPE).
        """
        from genapi.tokenizer import Tokenizer

        if self.tokenizer_kind == "sentencepiece":
            return Tokenizer.from_sentencepiece(self.tokenizer_data)
        with tempfile.TemporaryDirectory(prefix="genapi-tokenizer-") as folder:
            Path(folder, "tokenizer.json").write_bytes(self.tokenizer_data)
            return Tokenizer.from_folder(folder)

    def metadata(self, tokenizer: Tokenizer | None = None) -> BundleMetadata:
        """The generation metadata (a `.task` names tokens by text: `tokenizer` resolves them)."""
        if self.kind == "task":
            return protos.parse_llm_parameters(self.metadata_data, tokenizer or self.tokenizer())
        return protos.parse_llm_metadata(self.metadata_data)

    def extract_model(self, destination: str | os.PathLike) -> Path:
        """Copy the `.tflite` out of the bundle to `destination`."""
        with open(self.path, "rb") as src, open(destination, "wb") as dst:
            src.seek(self.model_offset)
            remaining = self.model_size
            while remaining:
                chunk = src.read(min(remaining, 1 << 24))
                if not chunk:
                    raise ValueError(f"{str(self.path)!r} is truncated")
                dst.write(chunk)
                remaining -= len(chunk)
        return Path(destination)


def read_bundle(path: str | os.PathLike) -> BundleContents:
    """Locate and check the parts of a `.task` or `.litertlm` file.

    Checks what makes Google's engine abort or go wrong silently: the three parts are there,
    the metadata parses, and the model keeps the prefill/decode signature contract.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming what is wrong with the file.
    """
    path = Path(path)
    kind = bundle_kind(path)
    if kind is None:
        raise ValueError(f"{str(path)!r} is not a bundle: the name must end in .task or .litertlm")
    if not path.is_file():
        raise FileNotFoundError(f"no such bundle: {str(path)!r}")

    if kind == "task":
        entries = task.read_task_entries(path)
        model = entries[task.MODEL_ENTRY]
        tokenizer_kind = "sentencepiece"
        tokenizer_data = task.read_range(path, *entries[task.TOKENIZER_ENTRY])
        metadata_data = task.read_range(path, *entries[task.METADATA_ENTRY])
    else:
        sections = litertlm.read_litertlm_sections(path)
        names = {
            litertlm.TFLITE_MODEL: "TFLiteModel",
            litertlm.LLM_METADATA: "LlmMetadataProto",
        }
        missing = [name for kind_id, name in names.items() if kind_id not in sections]
        if litertlm.SP_TOKENIZER not in sections and litertlm.HF_TOKENIZER_ZLIB not in sections:
            missing.append("a tokenizer (SP_Tokenizer or HF_Tokenizer_Zlib)")
        if missing:
            raise ValueError(f"{str(path)!r} lacks the sections: {', '.join(missing)}")
        model = sections[litertlm.TFLITE_MODEL]
        metadata_data = task.read_range(path, *sections[litertlm.LLM_METADATA])
        if litertlm.SP_TOKENIZER in sections:
            tokenizer_kind = "sentencepiece"
            tokenizer_data = task.read_range(path, *sections[litertlm.SP_TOKENIZER])
        else:
            tokenizer_kind = "tokenizer.json"
            raw = task.read_range(path, *sections[litertlm.HF_TOKENIZER_ZLIB])
            tokenizer_data = litertlm.decode_hf_tokenizer(raw).encode("utf-8")

    offset, size = model
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if offset + size > len(mm) or size < 8:
            raise ValueError(f"{str(path)!r}: the model entry lies outside the file")
        shape = check_llm_model_bytes(mm, offset, name=f"the model in {str(path)!r}")
    contents = BundleContents(
        path=path,
        kind=kind,
        model_offset=offset,
        model_size=size,
        tokenizer_kind=tokenizer_kind,
        tokenizer_data=tokenizer_data,
        metadata_data=metadata_data,
        shape=shape,
    )
    contents.metadata()  # parses, and names at least one stop token
    return contents


@contextlib.contextmanager
def extracted_model(contents: BundleContents) -> Iterator[Path]:
    """The bundle's `.tflite` copied to a temporary file, removed afterwards."""
    folder = tempfile.mkdtemp(prefix="genapi-bundle-")
    try:
        yield contents.extract_model(Path(folder, contents.path.stem + ".tflite"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
