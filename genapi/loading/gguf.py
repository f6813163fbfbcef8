"""Read a GGUF file (llama.cpp's format) as if it were a Hugging Face checkpoint.

`GGUFCheckpoint` gives the same three things a Hugging Face folder gives: a `config.json`-style
dict (`hf_config()`), tensor names in Hugging Face spelling (`tensor_names()`), and float32
tensors in PyTorch layout (`read_tensor()`), so one HF -> genapi weight table serves both
sources. The file is memory-mapped by the `gguf` package; each tensor is dequantized only when it
is read, one at a time.

What llama.cpp's converter changed is undone here:

- GGUF lists dimensions fastest-first ([in_features, out_features]); tensors come back in PyTorch
  order ([out_features, in_features]).
- Llama-family files store the rows of Q and K interleaved for llama.cpp's rope kernel
  (`llama_cpp_unpermute_qk`).
- Gemma 3 files store every RMSNorm weight as HF value + 1.
- Names: `gguf.get_tensor_name_map` maps the HF names each architecture uses to GGUF names; the
  reverse of that map names the file's tensors.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"

# llama.cpp's token types (the same numbers as SentencePiece's piece types).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = range(
    1, 7
)

# GGUF tensors that hold nothing a Hugging Face checkpoint has: llama.cpp derives them from the
# config (llama3 rope factors, which `hf_config()` turns back into `rope_scaling`).
_DERIVED_TENSORS = ("rope_freqs.weight",)


@dataclass(frozen=True)
class _Architecture:
    """How one GGUF `general.architecture` maps onto a Hugging Face model class."""

    hf_class: str  # `architectures[0]` in config.json
    model_type: str  # `model_type` in config.json
    top_modules: tuple[str, ...]  # HF module names outside the blocks
    layer_modules: tuple[str, ...]  # HF module names inside block {bid}, without the prefix
    unpermute_qk: bool = False  # llama.cpp interleaved the rows of Q and K (Llama family)
    norm_offset: float = 0.0  # llama.cpp stored norm weights as HF value + norm_offset
    norm_modules: tuple[str, ...] = ()  # the modules norm_offset applies to


_LLAMA_LAYER = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_GEMMA3_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "self_attn.q_norm",
    "self_attn.k_norm",
)

ARCHITECTURES: dict[str, _Architecture] = {
    "llama": _Architecture(
        hf_class="LlamaForCausalLM",
        model_type="llama",
        top_modules=("model.embed_tokens", "model.norm", "lm_head"),
        layer_modules=_LLAMA_LAYER,
        unpermute_qk=True,
    ),
    "qwen2": _Architecture(
        hf_class="Qwen2ForCausalLM",
        model_type="qwen2",
        top_modules=("model.embed_tokens", "model.norm", "lm_head"),
        layer_modules=_LLAMA_LAYER,
    ),
    "gemma3": _Architecture(
        hf_class="Gemma3ForCausalLM",
        model_type="gemma3_text",
        top_modules=("model.embed_tokens", "model.norm", "lm_head"),
        layer_modules=(*_LLAMA_LAYER, *_GEMMA3_NORMS[2:]),
        norm_offset=1.0,
        norm_modules=("model.norm", *_GEMMA3_NORMS),
    ),
    "phi2": _Architecture(
        hf_class="PhiForCausalLM",
        model_type="phi",
        top_modules=("model.embed_tokens", "model.final_layernorm", "lm_head"),
        layer_modules=(
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.dense",
            "mlp.fc1",
            "mlp.fc2",
        ),
    ),
}


def llama_cpp_permute_qk(weight: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    """Reorder Q or K rows the way llama.cpp's converter stores them (the inverse of
    `llama_cpp_unpermute_qk`).

    Before (Hugging Face): within each head of D rows, rotary pairs are rows (i, i + D/2).
    After (GGUF): within each head, the pair sits side by side: row 2i holds HF row i and
    row 2i + 1 holds HF row i + D/2.

    Args:
        weight: [H * D, ...] rows of Q or K (a weight [H * D, C] or a bias [H * D]).
        num_heads: H, the number of heads these rows belong to (the KV heads for K).

    Returns:
        A tensor of the same shape in GGUF row order.
    """
    half = weight.shape[0] // num_heads // 2
    halves = weight.reshape(num_heads, 2, half, *weight.shape[1:])  # [H, 2, D/2, ...]
    return halves.transpose(1, 2).reshape(weight.shape)  # [H, D/2, 2, ...] -> [H * D, ...]


def llama_cpp_unpermute_qk(weight: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's interleaving of Q or K rows.

    Before (GGUF): within each head of D rows, row 2i and row 2i + 1 form a rotary pair.
    After (Hugging Face, rotate-half layout): the pair is rows (i, i + D/2).

    Args:
        weight: [H * D, ...] rows of Q or K as the GGUF file stores them.
        num_heads: H, the number of heads these rows belong to (the KV heads for K).

    Returns:
        A tensor of the same shape in Hugging Face row order.
    """
    half = weight.shape[0] // num_heads // 2
    pairs = weight.reshape(num_heads, half, 2, *weight.shape[1:])  # [H, D/2, 2, ...]
    return pairs.transpose(1, 2).reshape(weight.shape)  # [H, 2, D/2, ...] -> [H * D, ...]


@functools.cache
def supported_tensor_types() -> tuple[str, ...]:
    """Names of the GGML tensor types the installed `gguf` package can dequantize."""
    names = []
    for qtype in gguf.GGMLQuantizationType:
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError, AssertionError):
            continue
        names.append(qtype.name)
    return tuple(names)


class _FastReader(gguf.GGUFReader):
    """`gguf.GGUFReader` slicing a plain ndarray view of its memory map instead of the memmap.

    The bytes and the lazy, memory-mapped tensor views are the same; only numpy's per-slice memmap
    bookkeeping is skipped. The reader slices once per vocabulary entry, so for Gemma 3's 262k
    tokens this cuts opening the file from about 15 s to 4 s.
    """

    def _get(self, offset, dtype, count=1, override_order=None):
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        count = int(count)
        dtype = np.dtype(dtype)
        arr = plain[offset : offset + dtype.itemsize * count].view(dtype)[:count]
        order = self.byte_order if override_order is None else override_order
        return arr.view(arr.dtype.newbyteorder(order))


# _FastReader overrides a private method; use it only while gguf's signature is the one it mirrors.
_FAST_READER_FITS = list(inspect.signature(gguf.GGUFReader._get).parameters) == [
    "self",
    "offset",
    "dtype",
    "count",
    "override_order",
]


@dataclass(frozen=True)
class _Source:
    """Where one HF tensor comes from: a GGUF tensor, optionally a row range of it."""

    gguf_name: str
    rows: tuple[int, int] | None = None  # [start, stop) of a fused tensor (Phi-2's attn_qkv)


class GGUFCheckpoint:
    """A GGUF file presented as a Hugging Face checkpoint, read lazily.

    Args:
        path: the `.gguf` file.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if `path` is not a GGUF file, or a damaged one.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {str(self.path)!r} does not exist")
        with self.path.open("rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ValueError(
                f"{str(self.path)!r} is not a GGUF file: it starts with {magic!r}, "
                f"a GGUF file starts with {GGUF_MAGIC!r}"
            )
        logger.debug("opening %s", self.path)
        reader_class = _FastReader if _FAST_READER_FITS else gguf.GGUFReader
        try:
            self._reader = reader_class(self.path)
        except (ValueError, IndexError, KeyError, OverflowError) as error:
            raise ValueError(f"GGUF file {str(self.path)!r} cannot be read: {error}") from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._sources: dict[str, _Source] | None = None
        self._config: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"GGUFCheckpoint({str(self.path)!r}, architecture={self.architecture!r})"

    # ---- metadata

    def metadata_keys(self) -> list[str]:
        """All metadata keys of the file, e.g. "llama.block_count", "tokenizer.ggml.tokens"."""
        return list(self._reader.fields)

    def metadata(self, key: str, default: Any = None) -> Any:
        """One metadata value: an int, float, bool, str or a list of them; `default` if absent."""
        field = self._reader.fields.get(key)
        if field is None or not field.types:
            return default
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            if field.types[-1] == gguf.GGUFValueType.STRING:
                return [_decode(field.parts[i]) for i in field.data]
            if not field.data:
                return []
            return np.concatenate([field.parts[i] for i in field.data]).tolist()
        if field.types[0] == gguf.GGUFValueType.STRING:
            return _decode(field.parts[-1])
        return field.parts[-1].tolist()[0]

    def _arch_key(self, name: str, default: Any = None) -> Any:
        return self.metadata(f"{self.architecture}.{name}", default)

    @property
    def architecture(self) -> str:
        """`general.architecture`, e.g. "llama", "gemma3", "qwen2", "phi2"."""
        arch = self.metadata("general.architecture")
        if not arch:
            raise ValueError(f"GGUF file {str(self.path)!r} has no general.architecture")
        return arch

    def _spec(self) -> _Architecture:
        spec = ARCHITECTURES.get(self.architecture)
        if spec is None:
            raise ValueError(
                f"{str(self.path)!r}: GGUF architecture {self.architecture!r} is not "
                f"supported; supported: {', '.join(sorted(ARCHITECTURES))}"
            )
        return spec

    # ---- config

    def hf_config(self) -> dict[str, Any]:
        """A Hugging Face `config.json`-style dict built from the file's metadata.

        Raises:
            NotImplementedError: for architectures genapi does not read yet.
        """
        return copy.deepcopy(self._cached_config())

    def _cached_config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = self._build_config()
        return self._config

    def _build_config(self) -> dict[str, Any]:
        spec = self._spec()
        arch = self.architecture
        hidden = int(self._require(f"{arch}.embedding_length"))
        heads = int(self._require(f"{arch}.attention.head_count"))
        kv_heads = _one_per_model(
            self._arch_key("attention.head_count_kv", heads), "attention.head_count_kv"
        )
        head_dim = self._arch_key("attention.key_length")
        if head_dim is None and arch == "llama":
            head_dim = self._arch_key("rope.dimension_count")
        head_dim = int(head_dim or hidden // heads)

        config: dict[str, Any] = {
            "architectures": [spec.hf_class],
            "model_type": spec.model_type,
            "vocab_size": self._vocab_size(),
            "hidden_size": hidden,
            "intermediate_size": _one_per_model(
                self._require(f"{arch}.feed_forward_length"), "feed_forward_length"
            ),
            "num_hidden_layers": int(self._require(f"{arch}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(kv_heads),
            "head_dim": head_dim,
            "rope_theta": float(self._arch_key("rope.freq_base", 10_000.0)),
            "rope_scaling": self._rope_scaling(head_dim=head_dim),
            "max_position_embeddings": int(self._arch_key("context_length", 2048)),
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "bos_token_id": self.metadata("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.metadata("tokenizer.ggml.padding_token_id"),
        }
        if arch == "phi2":
            config.update(self._phi2_config(head_dim=head_dim))
        else:
            config["rms_norm_eps"] = float(
                self._require(f"{arch}.attention.layer_norm_rms_epsilon")
            )
        if arch in ("llama", "qwen2"):
            config["hidden_act"] = "silu"
            config["attention_bias"] = "blk.0.attn_q.bias" in self._tensors
        if arch == "gemma3":
            config.update(self._gemma3_config(hidden=hidden, heads=heads, head_dim=head_dim))
        return config

    def _require(self, key: str) -> Any:
        value = self.metadata(key)
        if value is None:
            raise ValueError(f"GGUF file {str(self.path)!r} has no {key!r}, which is needed")
        return value

    def _vocab_size(self) -> int:
        embed = self._tensors.get("token_embd.weight")
        if embed is not None:
            return int(embed.shape[1])  # GGUF dims are [C, V]
        tokens = self._reader.fields.get("tokenizer.ggml.tokens")
        return int(self._arch_key("vocab_size", len(tokens.data) if tokens else 0))

    def _phi2_config(self, *, head_dim: int) -> dict[str, Any]:
        rotary_dim = int(self._arch_key("rope.dimension_count", head_dim))
        return {
            "layer_norm_eps": float(self._require("phi2.attention.layer_norm_epsilon")),
            "partial_rotary_factor": rotary_dim / head_dim,
            "hidden_act": "gelu_new",
            "qk_layernorm": False,
        }

    def _gemma3_config(self, *, hidden: int, heads: int, head_dim: int) -> dict[str, Any]:
        layers = int(self._require("gemma3.block_count"))
        scale = self._arch_key("attention.scale")
        if scale:
            query_pre_attn_scalar = 1.0 / float(scale) ** 2
        elif layers == 62:
            # Gemma 3 27B scales queries by hidden / heads, not head_dim; llama.cpp knows this
            # from the model size, not from the file (there is no key for it).
            query_pre_attn_scalar = hidden // heads
        else:
            query_pre_attn_scalar = head_dim
        pattern = self._arch_key("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # one flag per layer, true = sliding
            if len(pattern) != layers:
                raise ValueError(
                    f"gemma3.attention.sliding_window_pattern has {len(pattern)} entries "
                    f"for {layers} layers"
                )
            sliding = [bool(flag) for flag in pattern]
        else:
            sliding = [(i + 1) % int(pattern) != 0 for i in range(layers)]
        return {
            "sliding_window": int(self._require("gemma3.attention.sliding_window")),
            "query_pre_attn_scalar": query_pre_attn_scalar,
            "rope_local_base_freq": float(self._arch_key("rope.freq_base_swa", 10_000.0)),
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            "final_logit_softcapping": self._arch_key("final_logit_softcapping"),
            "attn_logit_softcapping": self._arch_key("attn_logit_softcapping"),
            "hidden_activation": "gelu_pytorch_tanh",
        }

    def _rope_scaling(self, *, head_dim: int) -> dict[str, Any] | None:
        kind = self._arch_key("rope.scaling.type")
        factor = self._arch_key("rope.scaling.factor")
        original = self._arch_key("rope.scaling.original_context_length")
        if "rope_freqs.weight" in self._tensors and kind in (None, "none", "llama3"):
            return self._llama3_rope_scaling(head_dim=head_dim, original=original)
        if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
            return None
        scaling: dict[str, Any] = {"rope_type": kind}
        if factor is not None:
            scaling["factor"] = float(factor)
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling

    def _llama3_rope_scaling(self, *, head_dim: int, original: int | None) -> dict[str, Any]:
        """Recover Llama 3's `rope_scaling` from the per-frequency factors llama.cpp stored.

        llama.cpp writes the factors instead of the parameters. In the smooth band the inverse
        factor is linear in 1 / wavelength, which fixes low/high_freq_factor once the original
        context length is chosen (the file's value, else Llama 3's 8192); any choice that fits
        reproduces the same frequencies, which is checked.
        """
        factors = self.read_gguf_tensor("rope_freqs.weight").double()  # [D/2]
        theta = float(self._arch_key("rope.freq_base", 10_000.0))
        rotary_dim = int(self._arch_key("rope.dimension_count", head_dim))
        original = int(original or 8192)
        factor = float(factors.max())
        inv_freq = theta ** -(torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        wavelen = 2 * math.pi / inv_freq

        # smooth = (original / wavelen - low) / (high - low), from 1/f = (1 - s) / factor + s
        smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)
        band = (factors > 1 + 1e-6) & (factors < factor - 1e-6 * factor)
        unsupported = NotImplementedError(
            "rope_freqs.weight that does not follow Llama 3's rope scaling is not supported yet: "
            f"factors {factors.tolist()}"
        )
        if factor <= 1 or int(band.sum()) < 2:
            raise unsupported
        x = original / wavelen[band]
        slope, intercept = np.polyfit(x.numpy(), smooth[band].numpy(), 1)
        low = -intercept / slope
        high = low + 1 / slope
        scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": float(low),
            "high_freq_factor": float(high),
            "original_max_position_embeddings": original,
        }
        if not torch.allclose(_llama3_factors(scaling, wavelen), factors, rtol=1e-4):
            raise unsupported
        return scaling

    # ---- tensors

    def _build_sources(self) -> dict[str, _Source]:
        spec = self._spec()
        layers = int(self._require(f"{self.architecture}.block_count"))
        name_map = gguf.get_tensor_name_map(_model_arch(self.architecture), layers)
        modules = list(spec.top_modules)
        for i in range(layers):
            modules += [f"model.layers.{i}.{m}" for m in spec.layer_modules]

        sources: dict[str, _Source] = {}
        for module in modules:
            base = name_map.get_name(module)
            if base is None:
                raise NotImplementedError(
                    f"reading {module!r} from a {self.architecture!r} GGUF is not supported yet: "
                    f"gguf {_gguf_version()} has no GGUF name for it"
                )
            for suffix in (".weight", ".bias"):
                if base + suffix in self._tensors:
                    sources[module + suffix] = _Source(base + suffix)
        used = {source.gguf_name for source in sources.values()}
        if self.architecture == "phi2":
            used |= self._split_fused_qkv(sources, layers)

        for name in self._tensors:
            if name in used:
                continue
            if name in _DERIVED_TENSORS:
                logger.debug("skipping %s: llama.cpp derived it from the config", name)
                continue
            # Keep it under its GGUF name: the weight loader then reports it as unused.
            logger.warning("GGUF tensor %r has no Hugging Face name; keeping the GGUF name", name)
            sources[name] = _Source(name)
        return sources

    def _split_fused_qkv(self, sources: dict[str, _Source], layers: int) -> set[str]:
        """Older Phi-2 files fuse Q, K and V into one attn_qkv tensor, rows [q; k; v]."""
        used = set()
        config = self._cached_config()
        q_rows = config["num_attention_heads"] * config["head_dim"]
        kv_rows = config["num_key_value_heads"] * config["head_dim"]
        bounds = {"q": (0, q_rows), "k": (q_rows, q_rows + kv_rows)}
        bounds["v"] = (q_rows + kv_rows, q_rows + 2 * kv_rows)
        for i in range(layers):
            for suffix in (".weight", ".bias"):
                fused = f"blk.{i}.attn_qkv{suffix}"
                if fused not in self._tensors:
                    continue
                used.add(fused)
                for part, rows in bounds.items():
                    sources[f"model.layers.{i}.self_attn.{part}_proj{suffix}"] = _Source(
                        fused, rows
                    )
        return used

    def _source(self, hf_name: str) -> _Source:
        if self._sources is None:
            self._sources = self._build_sources()
        source = self._sources.get(hf_name)
        if source is None:
            raise KeyError(
                f"{hf_name!r} is not a tensor of {str(self.path)!r}; "
                f"tensor_names() lists the {len(self._sources)} it has"
            )
        return source

    def tensor_names(self) -> list[str]:
        """Hugging Face names of the tensors, e.g. "model.layers.3.self_attn.q_proj.weight".

        A tied output head has no "lm_head.weight" (as in a Hugging Face checkpoint).
        """
        if self._sources is None:
            self._sources = self._build_sources()
        return list(self._sources)

    def tensor_shape(self, hf_name: str) -> torch.Size:
        """The PyTorch shape of a tensor, without reading its data."""
        source = self._source(hf_name)
        shape = list(reversed(self._tensors[source.gguf_name].shape.tolist()))
        if source.rows is not None:
            shape[0] = source.rows[1] - source.rows[0]
        return torch.Size(int(d) for d in shape)

    def tensor_type(self, hf_name: str) -> str:
        """The GGML storage type of a tensor, e.g. "Q4_K", "F32"."""
        return self._tensors[self._source(hf_name).gguf_name].tensor_type.name

    def read_tensor(self, hf_name: str) -> torch.Tensor:
        """One tensor, dequantized to float32, in Hugging Face layout and values.

        Raises:
            KeyError: if the file has no tensor of that name.
            NotImplementedError: if its storage type cannot be dequantized.
        """
        spec = self._spec()
        source = self._source(hf_name)
        weight = self.read_gguf_tensor(source.gguf_name)  # PyTorch dim order
        if source.rows is not None:
            weight = weight[source.rows[0] : source.rows[1]].clone()

        module = hf_name.rsplit(".", 1)[0]
        if spec.unpermute_qk and module.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            config = self._cached_config()
            heads = config["num_attention_heads"]
            if module.endswith("k_proj"):
                heads = config["num_key_value_heads"]
            weight = llama_cpp_unpermute_qk(weight, num_heads=heads)
        if spec.norm_offset and _is_one_of(module, spec.norm_modules):
            weight = weight - spec.norm_offset
        return weight.contiguous()

    def _release_pages(self, tensor) -> None:
        """Let the kernel drop the file pages a read touched: they would count in the
        process's RSS until the whole file is closed, although the data now lives in the
        dequantized copy (or in the page cache, should it be read again)."""
        mapping = getattr(self._reader.data, "_mmap", None)
        if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = int(tensor.data_offset)
        end = start + int(tensor.n_bytes)
        start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor
        end = end // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            mapping.madvise(mmap.MADV_DONTNEED, start, end - start)

    def read_gguf_tensor(self, gguf_name: str) -> torch.Tensor:
        """A tensor by its GGUF name, dequantized to float32 in PyTorch dim order, values as
        stored (no permutation, no norm offset)."""
        tensor = self._tensors.get(gguf_name)
        if tensor is None:
            raise KeyError(f"{gguf_name!r} is not a tensor of {str(self.path)!r}")
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        try:
            values = _dequantize_rows(tensor.data, tensor.tensor_type, shape)
            self._release_pages(tensor)
        except NotImplementedError:
            raise NotImplementedError(
                f"GGUF tensor type {tensor.tensor_type.name} (tensor {gguf_name!r}) is not "
                f"supported yet: gguf {_gguf_version()} dequantizes "
                f"{', '.join(supported_tensor_types())}"
            ) from None
        return torch.from_numpy(values)


# Rows are dequantized this many bytes of output at a time, so that the temporaries of
# dequantization stay small next to the float32 result.
_DEQUANT_CHUNK_BYTES = 8 << 20


def _dequantize_rows(data: np.ndarray, qtype, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of `data` in `shape`, a new writable array, dequantized in row chunks."""
    out = np.empty(shape, dtype=np.float32)
    if data.ndim < 2 or len(shape) < 2:
        out[...] = np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32).reshape(shape)
        return out
    rows = out.reshape(-1, shape[-1])
    source = data.reshape(rows.shape[0], -1)
    step = max(1, _DEQUANT_CHUNK_BYTES // (shape[-1] * 4))
    for start in range(0, rows.shape[0], step):
        chunk = gguf.quants.dequantize(source[start : start + step], qtype)
        rows[start : start + step] = np.asarray(chunk, dtype=np.float32).reshape(-1, shape[-1])
    return out


def _llama3_factors(scaling: Mapping[str, Any], wavelen: torch.Tensor) -> torch.Tensor:
    """Per-frequency divisors of Llama 3 rope scaling (as llama.cpp computes rope_freqs)."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    smooth = (original / wavelen - low) / (high - low)
    factors = 1 / ((1 - smooth) / factor + smooth)
    factors = torch.where(wavelen < original / high, torch.ones_like(factors), factors)
    return torch.where(wavelen > original / low, torch.full_like(factors, factor), factors)


def _model_arch(name: str) -> gguf.MODEL_ARCH:
    for arch, arch_name in gguf.MODEL_ARCH_NAMES.items():
        if arch_name == name:
            return arch
    raise NotImplementedError(
        f"GGUF architecture {name!r} is not supported yet: gguf {_gguf_version()} does not know it"
    )


def _one_per_model(value: Any, key: str) -> int:
    """A per-layer metadata list that must hold one value for the whole model."""
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise NotImplementedError(
                f"a different {key} per layer is not supported yet: the file has {value}"
            )
        value = value[0]
    return int(value)


def _is_one_of(module: str, names: Sequence[str]) -> bool:
    return any(module == n or module.endswith("." + n) for n in names)


def _decode(raw: np.ndarray) -> str:
    return raw.tobytes().decode("utf-8", errors="replace")


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(unknown version)"
