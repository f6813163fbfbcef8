"""Tokenizers for genapi models, with chat templates rendered the way transformers renders them.

Two kinds cover the supported families:

- "bpe": byte-level BPE (GPT-2 style: SmolLM2, Qwen2, Llama 3), run by the `tokenizers` library.
- "sentencepiece": a SentencePiece model (Gemma, Llama 2), run by `sentencepiece`. Its
  serialized model is what `.task` bundles carry (`to_sentencepiece_model_bytes()`).

A `Tokenizer` comes from a GGUF file (`from_gguf`, which rebuilds the tokenizer from the
vocabulary stored in the metadata), from a Hugging Face folder (`from_folder`), or from a
SentencePiece `.model` file (`from_sentencepiece`). Special tokens written in the text (such as
`<|im_start|>` or `<start_of_turn>`) encode as their single ids, as in transformers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
import jinja2.ext
import jinja2.nodes
import sentencepiece
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

if TYPE_CHECKING:
    from genapi.loading.gguf import GGUFCheckpoint

logger = logging.getLogger(__name__)

Kind = Literal["bpe", "sentencepiece"]

# Tokens that end a chat turn in the families genapi knows; each is a stop token when the
# vocabulary has it as a special token.
CHAT_END_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")

# llama.cpp's token types (SentencePiece's piece types use the same numbers).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = range(1, 7)

# Pre-tokenizers of byte-level BPE vocabularies, by llama.cpp's `tokenizer.ggml.pre` name.
# GPT-2's split (what `ByteLevel(use_regex=True)` applies).
_GPT2_PRE = ("gpt2", "mpt", "olmo")
# \p{N} characters one by one, then GPT-2's split (SmolLM, StarCoder).
_DIGITS_THEN_GPT2_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r")
# One regex split, then the byte mapping.
_SPLIT_PRE = {
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "llama-v3": "llama3",
    "smaug-bpe": "llama3",
    "falcon3": "llama3",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
}
_SPLIT_REGEXES = {
    "llama3": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}


class ChatTemplateError(ValueError):
    """A chat template refused the conversation (its `raise_exception(...)` was called)."""


class Tokenizer:
    """Text <-> token ids, special tokens and the chat template of one model.

    Build one with `from_gguf`, `from_folder` or `from_sentencepiece`.
    """

    def __init__(
        self,
        *,
        engine: _BPEEngine | _SentencePieceEngine,
        bos_id: int | None,
        eos_id: int | None,
        extra_stop_ids: Iterable[int] = (),
        chat_template: str | None = None,
        add_bos: bool = False,
    ):
        self._engine = engine
        self.kind: Kind = engine.kind
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template
        self.add_bos = add_bos  # whether the model expects BOS before a prompt
        stops = [eos_id, *extra_stop_ids]
        specials = engine.special_tokens()
        stops += [specials[t] for t in CHAT_END_TOKENS if t in specials]
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in stops if i is not None))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, stop_ids={self.stop_ids})"
        )

    # ---- encoding

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size()

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self._engine.id_to_token(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self._engine.id_to_token(self.eos_id)

    def special_tokens(self) -> dict[str, int]:
        """Special (control) tokens that encode as one id when written in the text."""
        return self._engine.special_tokens()

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in it become their single ids.

        Args:
            text: the text.
            add_bos: prepend the BOS id.

        Raises:
            ValueError: if add_bos is set but the tokenizer has no BOS token.
        """
        ids = self._engine.encode(text)
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True, but this tokenizer has no BOS token")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of `ids`; special tokens are written out unless `skip_special_tokens`."""
        return self._engine.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._engine.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self._engine.id_to_token(token_id)

    # ---- chat

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """Render a conversation with the model's chat template (as transformers renders it).

        Args:
            messages: dicts with "role" and "content".
            add_generation_prompt: end with the header of the model's reply.
            **variables: further template variables (e.g. `tools`, `enable_thinking`).

        Returns:
            The prompt text; encode it with `encode(prompt)` (templates that want BOS write it).

        Raises:
            ValueError: if the tokenizer has no chat template.
            ChatTemplateError: if the template rejects the conversation.
        """
        if not self.chat_template:
            raise ValueError(
                "this tokenizer has no chat template (base models usually have none); "
                "encode a plain prompt instead"
            )
        template = _compile_template(self.chat_template)
        return template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **variables,
        )

    # ---- export

    def to_sentencepiece_model_bytes(self) -> bytes:
        """The serialized SentencePiece `ModelProto` (what a `.task` bundle carries).

        Raises:
            NotImplementedError: for byte-level BPE tokenizers.
        """
        if not isinstance(self._engine, _SentencePieceEngine):
            raise NotImplementedError(
                f"a SentencePiece model of a {self.kind!r} tokenizer is not supported yet: "
                "byte-level BPE has no SentencePiece equivalent; use to_tokenizer_json()"
            )
        return self._engine.model_bytes

    def to_tokenizer_json(self) -> str:
        """The Hugging Face `tokenizer.json` text of a byte-level BPE tokenizer.

        Raises:
            NotImplementedError: for SentencePiece tokenizers.
        """
        if not isinstance(self._engine, _BPEEngine):
            raise NotImplementedError(
                "tokenizer.json of a SentencePiece tokenizer is not supported yet: "
                "use to_sentencepiece_model_bytes()"
            )
        return self._engine.tokenizer.to_str()

    # ---- constructors

    @classmethod
    def from_gguf(cls, source: str | os.PathLike[str] | GGUFCheckpoint) -> Tokenizer:
        """Rebuild the tokenizer stored in a GGUF file's metadata.

        Args:
            source: a `.gguf` path or an open `GGUFCheckpoint`.

        Raises:
            FileNotFoundError / ValueError: if the path is missing or not a GGUF file.
            NotImplementedError: for tokenizer models or pre-tokenizers not supported yet.
        """
        from genapi.loading.gguf import GGUFCheckpoint

        ckpt = source if isinstance(source, GGUFCheckpoint) else GGUFCheckpoint(source)
        model = ckpt.metadata("tokenizer.ggml.model")
        tokens = ckpt.metadata("tokenizer.ggml.tokens")
        if model is None or not tokens:
            raise ValueError(f"GGUF file {str(ckpt.path)!r} holds no tokenizer")
        types = ckpt.metadata("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)

        engine: _BPEEngine | _SentencePieceEngine
        if model == "gpt2":
            pre = ckpt.metadata("tokenizer.ggml.pre", "gpt2")
            merges = ckpt.metadata("tokenizer.ggml.merges") or []
            engine = _BPEEngine(_byte_level_bpe(tokens, types, merges, pre=pre))
        elif model == "llama":
            proto = _sentencepiece_proto(
                tokens,
                types,
                ckpt.metadata("tokenizer.ggml.scores") or [0.0] * len(tokens),
                unk_id=ckpt.metadata("tokenizer.ggml.unknown_token_id"),
                bos_id=ckpt.metadata("tokenizer.ggml.bos_token_id"),
                eos_id=ckpt.metadata("tokenizer.ggml.eos_token_id"),
                pad_id=ckpt.metadata("tokenizer.ggml.padding_token_id"),
                add_dummy_prefix=bool(ckpt.metadata("tokenizer.ggml.add_space_prefix", True)),
            )
            engine = _SentencePieceEngine(proto.SerializeToString())
        else:
            raise NotImplementedError(
                f"GGUF tokenizer model {model!r} is not supported yet: genapi rebuilds 'gpt2' "
                "(byte-level BPE) and 'llama' (SentencePiece)"
            )

        extra_stops = [
            ckpt.metadata("tokenizer.ggml.eot_token_id"),
            ckpt.metadata("tokenizer.ggml.eom_token_id"),
        ]
        return cls(
            engine=engine,
            bos_id=ckpt.metadata("tokenizer.ggml.bos_token_id"),
            eos_id=ckpt.metadata("tokenizer.ggml.eos_token_id"),
            extra_stop_ids=[i for i in extra_stops if i is not None],
            chat_template=ckpt.metadata("tokenizer.chat_template"),
            add_bos=bool(ckpt.metadata("tokenizer.ggml.add_bos_token", model == "llama")),
        )

    @classmethod
    def from_sentencepiece(
        cls, model: str | os.PathLike[str] | bytes, *, chat_template: str | None = None
    ) -> Tokenizer:
        """A tokenizer from a SentencePiece `.model` file (or its bytes).

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is not a SentencePiece model.
        """
        if not isinstance(model, bytes):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model {str(path)!r} does not exist")
            model = path.read_bytes()
        engine = _SentencePieceEngine(model)
        sp = engine.processor
        return cls(
            engine=engine,
            bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
            eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
            chat_template=chat_template,
            add_bos=True,
        )

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """A tokenizer from a Hugging Face model folder.

        Reads `tokenizer.json` (byte-level BPE) or `tokenizer.model` (SentencePiece), the chat
        template and special tokens from `tokenizer_config.json` / `chat_template.jinja`, and
        extra stop ids from `generation_config.json`.

        Raises:
            FileNotFoundError: if the folder or both tokenizer files are missing.
            NotImplementedError: for a non-byte-level tokenizer.json without tokenizer.model.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist")
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        json_path, model_path = folder / "tokenizer.json", folder / "tokenizer.model"

        engine: _BPEEngine | _SentencePieceEngine
        if json_path.is_file() and _is_byte_level(json_path):
            engine = _BPEEngine(tokenizers.Tokenizer.from_file(str(json_path)))
        elif model_path.is_file():
            specials = {
                entry["content"]: int(token_id)
                for token_id, entry in (config.get("added_tokens_decoder") or {}).items()
                if entry.get("special")
            }
            engine = _SentencePieceEngine(model_path.read_bytes(), extra_specials=specials)
        elif json_path.is_file():
            raise NotImplementedError(
                f"{str(json_path)!r} is not byte-level BPE, which is not supported yet without "
                "a tokenizer.model beside it"
            )
        else:
            raise FileNotFoundError(
                f"{str(folder)!r} has neither tokenizer.json nor tokenizer.model"
            )

        bos_id = _token_id(engine, config.get("bos_token"))
        eos_id = _token_id(engine, config.get("eos_token"))
        if bos_id is None:
            bos_id = _first_id(generation.get("bos_token_id"))
        generation_eos = generation.get("eos_token_id")
        if isinstance(generation_eos, int):
            generation_eos = [generation_eos]
        generation_eos = list(generation_eos or [])
        if eos_id is None and generation_eos:
            eos_id = generation_eos[0]

        template_path = folder / "chat_template.jinja"
        template = config.get("chat_template")
        if template_path.is_file():
            template = template_path.read_text(encoding="utf-8")
        elif isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)

        add_bos = config.get("add_bos_token")
        if add_bos is None:
            add_bos = isinstance(engine, _SentencePieceEngine) or engine.adds_bos(bos_id)
        return cls(
            engine=engine,
            bos_id=bos_id,
            eos_id=eos_id,
            extra_stop_ids=generation_eos,
            chat_template=template,
            add_bos=bool(add_bos),
        )


# ---- engines


class _BPEEngine:
    """Byte-level BPE run by the `tokenizers` library."""

    kind: Kind = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        token = self.tokenizer.id_to_token(token_id)
        if token is None:
            raise KeyError(f"token id {token_id} is outside the vocabulary of {self.vocab_size()}")
        return token

    def special_tokens(self) -> dict[str, int]:
        return {
            added.content: token_id
            for token_id, added in self.tokenizer.get_added_tokens_decoder().items()
            if added.special
        }

    def adds_bos(self, bos_id: int | None) -> bool:
        """Whether tokenizer.json's post-processor puts BOS in front."""
        ids = self.tokenizer.encode("a", add_special_tokens=True).ids
        return bos_id is not None and bool(ids) and ids[0] == bos_id


class _SentencePieceEngine:
    """A SentencePiece model, with its control tokens matched in the text first (SentencePiece
    itself never produces control tokens from text; transformers does)."""

    kind: Kind = "sentencepiece"

    def __init__(self, model_bytes: bytes, *, extra_specials: Mapping[str, int] | None = None):
        self.model_bytes = model_bytes
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
        except RuntimeError as error:
            raise ValueError(f"not a valid SentencePiece model: {error}") from None
        sp = self.processor
        specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i)}
        for token, token_id in (extra_specials or {}).items():
            if token_id >= sp.get_piece_size():
                raise NotImplementedError(
                    f"added token {token!r} (id {token_id}) is not supported yet: it lies past "
                    f"the SentencePiece vocabulary of {sp.get_piece_size()}"
                )
            specials.setdefault(token, token_id)
        self._specials = specials
        self._splitter = _special_splitter(tuple(specials))

    def encode(self, text: str) -> list[int]:
        if self._splitter is None:
            return self.processor.encode(text)
        ids: list[int] = []
        for i, piece in enumerate(self._splitter.split(text)):
            if i % 2:  # a special token (the split pattern is one capturing group)
                ids.append(self._specials[piece])
            elif piece:
                ids += self.processor.encode(piece)
        return ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        # SentencePiece decodes control tokens to "": write them out, as transformers does.
        out, run = [], []
        for token_id in ids:
            if self.processor.is_control(token_id):
                out.append(self.processor.decode(run))
                run = []
                if not skip_special_tokens:
                    out.append(self.processor.id_to_piece(token_id))
            else:
                run.append(token_id)
        out.append(self.processor.decode(run))
        return "".join(out)

    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        token_id = self.processor.piece_to_id(token)
        if token_id == self.processor.unk_id() and token != self.processor.id_to_piece(token_id):
            return None
        return token_id

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size():
            raise KeyError(f"token id {token_id} is outside the vocabulary of {self.vocab_size()}")
        return self.processor.id_to_piece(token_id)

    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)


@functools.lru_cache(maxsize=8)
def _special_splitter(tokens: tuple[str, ...]) -> re.Pattern[str] | None:
    if not tokens:
        return None
    # Longest first, so "<|im_end|>" is not cut short by a special token that is its prefix.
    alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(f"({alternatives})")


# ---- building from GGUF metadata


def _byte_level_bpe(
    tokens: Sequence[str], types: Sequence[int], merges: Sequence[str], *, pre: str
) -> tokenizers.Tokenizer:
    """A `tokenizers` BPE from llama.cpp's vocabulary, merges and pre-tokenizer name."""
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        logger.warning("the vocabulary repeats %d token strings", len(tokens) - len(vocab))
    pairs = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ValueError(f"BPE merge {merge!r} is not two tokens separated by one space")
        pairs.append((parts[0], parts[1]))

    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
    user_defined = [t for t, kind in zip(tokens, types, strict=True) if kind == _USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    return tokenizer


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre` == `pre`."""
    if pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_REGEXES[_SPLIT_PRE[pre]]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    known = sorted({*_GPT2_PRE, *_DIGITS_THEN_GPT2_PRE, *_SPLIT_PRE})
    raise NotImplementedError(
        f"byte-level BPE pre-tokenizer {pre!r} is not supported yet: genapi knows {known}"
    )


def _sentencepiece_proto(
    tokens: Sequence[str],
    types: Sequence[int],
    scores: Sequence[float],
    *,
    unk_id: int | None,
    bos_id: int | None,
    eos_id: int | None,
    pad_id: int | None,
    add_dummy_prefix: bool,
) -> sentencepiece_model_pb2.ModelProto:
    """A SentencePiece BPE `ModelProto` from llama.cpp's vocabulary, scores and token types."""
    if unk_id is None:
        unk_id = next((i for i, kind in enumerate(types) if kind == _UNKNOWN), None)
    if unk_id is None:
        raise ValueError("the SentencePiece vocabulary has no unknown token")
    proto = sentencepiece_model_pb2.ModelProto()
    for i, (token, kind, score) in enumerate(zip(tokens, types, scores, strict=True)):
        if i == unk_id:
            kind = _UNKNOWN  # llama.cpp may label it control; SentencePiece needs exactly one
        elif kind not in (_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE):
            kind = _NORMAL
        if kind == _USER_DEFINED:
            # llama.cpp wrote the whitespace of user-defined pieces as spaces; SentencePiece
            # matches them after escaping whitespace to U+2581.
            token = token.replace(" ", "\u2581")
        proto.pieces.add(piece=token, score=float(score), type=kind)

    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = any(kind == _BYTE for kind in types)
    trainer.unk_id = unk_id
    trainer.bos_id = -1 if bos_id is None else bos_id
    trainer.eos_id = -1 if eos_id is None else eos_id
    trainer.pad_id = -1 if pad_id is None else pad_id
    trainer.unk_piece = tokens[unk_id]
    for field, token_id in (("bos_piece", bos_id), ("eos_piece", eos_id), ("pad_piece", pad_id)):
        if token_id is not None:
            setattr(trainer, field, tokens[token_id])

    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = add_dummy_prefix
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto


# ---- helpers


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _is_byte_level(tokenizer_json: Path) -> bool:
    data = _read_json(tokenizer_json)
    return "ByteLevel" in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])


def _token_id(engine: _BPEEngine | _SentencePieceEngine, token: Any) -> int | None:
    """The id of a tokenizer_config.json token entry (a string or an AddedToken dict)."""
    if isinstance(token, dict):
        token = token.get("content")
    if not token:
        return None
    return engine.token_to_id(token)


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


# ---- chat templates


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which chat templates do not want.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers uses it to mark assistant text for
    training masks; for a prompt it renders as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)
