"""The `genapi` command line: argument parsing and error reporting only."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger("genapi")

# Errors a user can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError)


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-new-tokens", "--max-tokens", type=int, default=64, help="most tokens to generate"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k best tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=None, help="seed for repeatable sampling")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for LiteRT")


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line, like every other genapi error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genapi", description="Author small language models and run them on devices."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser(
        "demo", help="convert the embedded SmolLM2-135M once and answer a question with it"
    )
    demo.add_argument("--prompt", default=None, help="the question to ask")
    _add_sampling_args(demo)

    gen = sub.add_parser("generate", help="generate text from a .tflite file or a checkpoint")
    gen.add_argument(
        "source",
        help="a converted .tflite file (run by LiteRT), or a Hugging Face folder, hub repo id "
        "or .gguf file (run by the genapi PyTorch model)",
    )
    gen.add_argument(
        "--tokenizer", default=None, help="for a .tflite: the checkpoint it was converted from"
    )
    gen.add_argument("--prompt", default=None, help="the prompt; without it, an interactive chat")
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.add_argument("--architecture", default=None, help="override the detected architecture")
    _add_sampling_args(gen)

    conv = sub.add_parser("convert", help="convert a checkpoint to a .tflite file")
    conv.add_argument("source", help="Hugging Face folder, hub repo id, or .gguf file")
    conv.add_argument("-o", "--output", required=True, help="output path ending in .tflite")
    conv.add_argument("--architecture", default=None, help="override the detected architecture")
    conv.add_argument(
        "--quantize",
        default="none",
        choices=["none"],
        help="weight recipe; only 'none' (fp32) exists so far",
    )
    conv.add_argument(
        "--prefill-lengths",
        type=_int_list,
        default=(8, 64, 128),
        help="comma-separated prefill signature lengths (default 8,64,128)",
    )
    conv.add_argument("--kv-cache-len", type=int, default=512, help="KV cache length")
    conv.add_argument(
        "--kv-layout",
        default="transposed",
        help="transposed (K [1,G,S,D], V [1,G,D,S]), bgsd, or bsgd (needs --mask-input)",
    )
    conv.add_argument("--mask-input", action="store_true", help="take the mask as an input")
    conv.add_argument("--prefill-logits", action="store_true", help="prefill outputs logits")

    insp = sub.add_parser("inspect", help="show a .tflite file's signatures, ops and weights")
    insp.add_argument("file", help="a .tflite file")
    insp.add_argument("--json", action="store_true", help="print JSON for machines")

    sub.add_parser("models", help="list the supported model families and presets")
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 8,64,128"
        ) from None


def _convert(args: argparse.Namespace) -> int:
    from genapi.export.llm import export_llm
    from genapi.loading.checkpoint import model_weights, open_checkpoint
    from genapi.models import build_model

    if not args.output.endswith(".tflite"):
        raise ValueError(f"output {args.output!r} must end in .tflite")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder!r} does not exist")
    start = time.perf_counter()
    ckpt = open_checkpoint(args.source, architecture=args.architecture)
    path = export_llm(
        build_model(ckpt.config, device="meta"),
        args.output,
        prefill_lengths=args.prefill_lengths,
        kv_cache_len=args.kv_cache_len,
        kv_layout=args.kv_layout,
        mask_input=args.mask_input,
        prefill_logits=args.prefill_logits,
        weights=model_weights(ckpt),
        progress=True,
    )
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from genapi.export.inspect import format_report, inspect_model

    info = inspect_model(args.file)
    if args.json:
        info = {k: v for k, v in info.items() if k != "metadata"}
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_report(info))
    return 0


def _sampling(args: argparse.Namespace):
    from genapi.sampling import SamplingConfig

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    return SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )


def _generate(args: argparse.Namespace, source: str, prompt: str | None, *, chat: bool) -> int:
    """Generate with the PyTorch model of a checkpoint (to compare with converted files)."""
    from genapi.generation import generate
    from genapi.loading.checkpoint import load, open_checkpoint, open_tokenizer

    sampling = _sampling(args)
    start = time.perf_counter()
    ckpt = open_checkpoint(source, architecture=getattr(args, "architecture", None))
    tokenizer = open_tokenizer(ckpt)
    model = load(ckpt)
    print(f"[{ckpt.path.name}, PyTorch fp32, loaded in {time.perf_counter() - start:.1f} s]",
          file=sys.stderr)  # fmt: skip

    def reply(ids: list[int]):
        tokens = generate(
            model,
            ids,
            max_new_tokens=args.max_new_tokens,
            stop_ids=tokenizer.stop_ids,
            sampling=sampling,
        )
        start = time.perf_counter()
        first, count, text = _stream(tokenizer, tokens, limit=args.max_new_tokens)
        end = time.perf_counter()
        if first is not None:
            print(
                f"[prefill {len(ids)} tokens: {len(ids) / (first - start):.1f} tok/s; decode "
                f"{count} tokens: {max(count - 1, 0) / max(end - first, 1e-9):.1f} tok/s; "
                "PyTorch]",
                file=sys.stderr,
            )
        return text

    return _converse(tokenizer, reply, prompt, chat=chat)


def _converse(tokenizer, reply, prompt: str | None, *, chat: bool) -> int:
    """Answer `prompt`, or without one hold an interactive chat on stdin until EOF or /exit."""
    from genapi.runtime import prompt_ids

    if prompt is not None:
        print(f"> {prompt}", file=sys.stderr)
        reply(prompt_ids(tokenizer, prompt, chat=chat))
        return 0
    if tokenizer.chat_template is None:
        raise ValueError("this model has no chat template; pass --prompt for plain completion")
    print("[chat: type a message; an empty line or /exit ends]", file=sys.stderr)
    messages: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line or line in ("/exit", "/quit"):
            break
        messages.append({"role": "user", "content": line})
        text = tokenizer.apply_chat_template(messages)
        answer = reply(prompt_ids(tokenizer, text, chat=False))
        messages.append({"role": "assistant", "content": answer})
    return 0


@contextlib.contextmanager
def _native_logs_hidden(hide: bool):
    """Send what native libraries write to file descriptor 2 (LiteRT's INFO lines about
    accelerators it looks for) to /dev/null, while Python's sys.stderr keeps working."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def _generate_tflite(args, model_path: str, tokenizer, prompt: str | None, *, chat: bool) -> int:
    """Generate with a converted file in ai-edge-litert (genapi.runtime, no torch)."""
    with _native_logs_hidden(not args.verbose):
        return _run_tflite(args, model_path, tokenizer, prompt, chat=chat)


def _run_tflite(args, model_path: str, tokenizer, prompt: str | None, *, chat: bool) -> int:
    from genapi.runtime import LiteRTGenerator

    sampling = _sampling(args)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"no such .tflite file: {model_path!r}")
    generator = LiteRTGenerator(
        model_path, num_threads=args.threads, weight_cache=model_path + ".xnnpack_cache"
    )
    print(f"[{os.path.basename(model_path)}, LiteRT CPU, {args.threads} threads]",
          file=sys.stderr)  # fmt: skip

    def reply(ids: list[int]) -> str:
        tokens = generator.generate(
            ids, max_new_tokens=args.max_new_tokens, sampling=sampling, stop_ids=tokenizer.stop_ids
        )
        _, _, text = _stream(tokenizer, tokens, limit=args.max_new_tokens)
        stats = generator.stats
        print(
            f"[prefill {stats.prompt_tokens} tokens: {stats.prefill_tokens_per_second:.1f} "
            f"tok/s; decode {stats.decode_tokens} tokens: {stats.decode_tokens_per_second:.1f} "
            "tok/s]",
            file=sys.stderr,
        )
        return text

    try:
        return _converse(tokenizer, reply, prompt, chat=chat)
    finally:
        generator = None  # release the runtime while its log lines are still hidden
        gc.collect()


def _stream(tokenizer, tokens, *, limit: int) -> tuple[float | None, int, str]:
    """Print text as tokens arrive; returns the first token's time, the count and the text."""
    ids: list[int] = []
    shown = ""
    first = None
    for token in tokens:
        first = first or time.perf_counter()
        ids.append(token)
        text = tokenizer.decode(ids)
        # Print only whole characters: a token may end inside a multi-byte character.
        if not text.endswith("\ufffd"):
            print(text[len(shown) :], end="", flush=True)
            shown = text
    if len(ids) == limit:
        print(" [...]", end="")
    print()
    if len(ids) == limit:
        print(f"[stopped at --max-new-tokens {limit}]", file=sys.stderr)
    return first, len(ids), tokenizer.decode(ids)


def _demo(args: argparse.Namespace) -> int:
    """Convert the embedded SmolLM2-135M-Instruct once (reused later) and run the file."""
    from genapi.defaults import DEFAULT_PROMPT, default_checkpoint
    from genapi.export.llm import export_llm
    from genapi.loading.checkpoint import model_weights, open_checkpoint, open_tokenizer
    from genapi.models import build_model

    ckpt = open_checkpoint(default_checkpoint())
    cache = os.environ.get("GENAPI_CACHE", os.path.expanduser("~/.cache/genapi"))
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{ckpt.config.name}-fp32.tflite")
    if not os.path.isfile(path):
        print(f"[converting {ckpt.path.name} to {path}]", file=sys.stderr)
        start = time.perf_counter()
        meta = build_model(ckpt.config, device="meta")
        export_llm(meta, path, weights=model_weights(ckpt), progress=True)
        print(f"[converted in {time.perf_counter() - start:.1f} s]", file=sys.stderr)
    prompt = args.prompt or DEFAULT_PROMPT
    return _generate_tflite(args, path, open_tokenizer(ckpt), prompt, chat=True)


def _models() -> int:
    from genapi.models import families, preset_names

    for name, family in sorted(families().items()):
        archs = ", ".join(family.hf_architectures + family.gguf_architectures) or "-"
        print(f"{name:10s} {archs}")
    print("presets: " + ", ".join(preset_names()))
    return 0


def _interrupted(signum, frame) -> None:
    # Exit at once: unwinding through torch's tracing machinery can bury a Ctrl-C under an
    # unrelated traceback. A half-written output stays a temp file, removed by the next run.
    print("\ngenapi: interrupted", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # --verbose is about genapi's own steps, not the libraries' internals.
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "generate":
            if args.source.endswith(".tflite"):
                if args.tokenizer is None:
                    raise ValueError(
                        "a .tflite file holds no tokenizer; pass --tokenizer with the "
                        "checkpoint (folder, hub id or .gguf) it was converted from"
                    )
                from genapi.loading.checkpoint import open_checkpoint, open_tokenizer

                tokenizer = open_tokenizer(open_checkpoint(args.tokenizer))
                return _generate_tflite(
                    args, args.source, tokenizer, args.prompt, chat=not args.no_chat
                )
            return _generate(args, args.source, args.prompt, chat=not args.no_chat)
        if args.command == "convert":
            return _convert(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "models":
            return _models()
    except USER_ERRORS as err:
        print(f"genapi: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")


def entry() -> int:
    """The console script: `main`, then silence native teardown logs (LiteRT prints INFO
    lines from its destructors at exit) unless --verbose."""
    code = main()
    if not {"-v", "--verbose"} & set(sys.argv[1:]):
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    return code
