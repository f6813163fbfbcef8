"""ExecuTorch side of `make bench-peers`; runs in the executorch environment, not genapi's.

    python executorch_child.py export HF_FOLDER RECIPE OUTPUT.pte   # RECIPE: fp32 or 8da4w
    python executorch_child.py measure MODEL.pte                     # one JSON line

`export` turns the Hugging Face folder that compare.py writes (the shipped Q4_1 GGUF,
dequantized) into ExecuTorch's Llama checkpoint layout and a params file for the SmolLM2-135M
shape, both kept next to OUTPUT for the other recipe, then exports with ExecuTorch's own
Llama exporter (`examples.models.llama.export_llama_lib`, model class smollm2): a KV cache of
512 positions held in the program, its fused SDPA-with-cache op, dynamic sequence length up to
128 so that one call prefills the whole prompt, everything XNNPACK can run delegated to it.
Recipe fp32 keeps float weights; 8da4w stores the linear layers and the head as int4 in
groups of 32 with int8 dynamic activations, and the embedding as int4 in groups of 32 (as
genapi's dynamic_int4 does). The caller times this process.

`measure` runs the .pte in the pybindings runtime on 2 threads: a 128-token prompt in one call,
then 32 greedy decode steps, best of three; it reads the peak RSS above the baseline after
imports and prints the greedy tokens of the first run so that the caller can check them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from child_common import PROMPT, STEPS, print_figures, status_bytes

CACHE = 512
# export_llama options for each recipe, on top of the common ones in `export`.
RECIPES = {
    "fp32": [],
    "8da4w": ["--quantization_mode", "8da4w", "--group_size", "32", "-E", "4,32"],
}


def _unpermute(weight, heads: int):
    """Hugging Face's rotate-half row order of a q/k projection back to Llama's interleaved one."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def llama_checkpoint(hf_folder: Path, folder: Path) -> tuple[Path, Path]:
    """ExecuTorch's Llama state dict and params.json for the model in `hf_folder`, written once.

    The names must not contain "int8" or "8da4w": ExecuTorch's loader reads those in the
    checkpoint path as a pre-quantized checkpoint.
    """
    checkpoint, params = folder / "smollm2-135m-llama.pth", folder / "smollm2-135m-params.json"
    if checkpoint.is_file() and params.is_file():
        return checkpoint, params
    import torch
    from safetensors.torch import load_file

    config = json.loads((hf_folder / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    rope = config.get("rope_parameters") or {}
    shape = {
        "dim": config["hidden_size"],
        "n_layers": config["num_hidden_layers"],
        "n_heads": heads,
        "n_kv_heads": kv_heads,
        "hidden_dim": config["intermediate_size"],
        "vocab_size": config["vocab_size"],
        "rope_theta": rope.get("rope_theta", config.get("rope_theta")),
        "norm_eps": round(config["rms_norm_eps"], 9),
        "use_scaled_rope": False,
    }
    if not config.get("tie_word_embeddings"):
        raise SystemExit("expected SmolLM2 with tied embeddings")

    names = {
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "model.norm.weight": "norm.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attention.wq",
        "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.down_proj": "feed_forward.w2",
        "mlp.up_proj": "feed_forward.w3",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for layer in range(shape["n_layers"]):
        for hf, ours in per_layer.items():
            names[f"model.layers.{layer}.{hf}.weight"] = f"layers.{layer}.{ours}.weight"

    source = load_file(str(hf_folder / "model.safetensors"))
    state = {}
    for hf, ours in names.items():
        weight = source.pop(hf).to(torch.float32).contiguous()
        if ours.endswith("attention.wq.weight"):
            weight = _unpermute(weight, heads).contiguous()
        elif ours.endswith("attention.wk.weight"):
            weight = _unpermute(weight, kv_heads).contiguous()
        state[ours] = weight
    source.pop("lm_head.weight", None)
    if source:
        raise SystemExit(f"unmapped SmolLM2 tensors: {sorted(source)}")
    state["output.weight"] = state["tok_embeddings.weight"]

    folder.mkdir(parents=True, exist_ok=True)
    partial = checkpoint.with_suffix(".partial")
    torch.save(state, partial)
    params.write_text(json.dumps(shape, indent=1) + "\n")
    partial.rename(checkpoint)
    return checkpoint, params


def export(hf_folder: Path, recipe: str, output: Path) -> None:
    import torch
    from executorch.examples.models.llama.export_llama_lib import build_args_parser, export_llama

    checkpoint, params = llama_checkpoint(hf_folder, output.parent)
    sys.setrecursionlimit(4096)  # as export_llama's own entry point does
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        arguments = [
            "--model=smollm2",
            f"--checkpoint={checkpoint}",
            f"--params={params}",
            "--use_kv_cache",
            "--use_sdpa_with_kv_cache",
            f"--max_context_length={CACHE}",
            # The exporter's dynamic token dimension stops one short of max_seq_length.
            f"--max_seq_length={len(PROMPT) + 1}",
            "--dtype-override=fp32",
            "--xnnpack",
            "--xnnpack-extended-ops",
            f"--output-dir={work}",
            "--output_name=model.pte",
            *RECIPES[recipe],
        ]
        produced = Path(export_llama(build_args_parser().parse_args(arguments)))
        produced.rename(output)


def measure(path: Path) -> None:
    # The first two register kernels of the ops the exporter leaves outside XNNPACK: the fused
    # SDPA and cache update, and the int4 embedding lookup.
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(2)
    baseline = status_bytes("VmRSS")
    module = portable_lib._load_for_executorch(str(path))

    def run(tokens: list[int], start: int) -> int:
        inputs = (torch.tensor([tokens], dtype=torch.long), torch.tensor([start], dtype=torch.long))
        logits = module.forward(inputs)[0]
        return int(torch.argmax(logits.reshape(-1, logits.shape[-1])[-1]))

    prefill, decode, generated = [], [], []
    for _ in range(3):
        start = time.perf_counter()
        token = run(PROMPT, 0)
        prefill.append(time.perf_counter() - start)
        tokens = [token]
        start = time.perf_counter()
        for pos in range(len(PROMPT), len(PROMPT) + STEPS):
            token = run([token], pos)
            tokens.append(token)
        decode.append((time.perf_counter() - start) / STEPS)
        generated = generated or tokens
    threads = portable_lib._threadpool_get_thread_count()
    print_figures(path, prefill, decode, baseline, threads=threads, tokens=generated)


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        measure(Path(sys.argv[2]))
