"""The `genapi` command line: argument parsing and error reporting only."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import re
import signal
import sys
import threading
import time

from genapi.export.quantize import BLOCK_SIZES, PARTS, RECIPES

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
    gen.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "litert-lm", "genapi"],
        help="for a .task/.litertlm: Google's LiteRT-LM engine (auto: when installed) or "
        "genapi's own runner",
    )
    _add_sampling_args(gen)

    conv = sub.add_parser("convert", help="convert a checkpoint to a .tflite file")
    conv.add_argument("source", help="Hugging Face folder, hub repo id, or .gguf file")
    conv.add_argument(
        "-o",
        "--output",
        required=True,
        help="output path ending in .tflite, or .task / .litertlm for a bundle with the tokenizer",
    )
    conv.add_argument("--architecture", default=None, help="override the detected architecture")
    conv.add_argument(
        "--quantize",
        default="none",
        choices=list(RECIPES),
        help="weight recipe (default none: fp32). dynamic_int4 stores the linear layers, the "
        "embedding and the head as int4 blocks",
    )
    conv.add_argument(
        "--block-size",
        type=int,
        default=32,
        choices=list(BLOCK_SIZES),
        help="columns per int4 block for dynamic_int4 (default 32)",
    )
    conv.add_argument(
        "--quantize-part",
        type=_part_override,
        action="append",
        default=[],
        metavar="PART=RECIPE",
        help=f"another recipe for one part ({', '.join(PARTS)}), e.g. head=dynamic_int8; "
        "repeatable",
    )
    conv.add_argument(
        "--calibrate",
        action="store_true",
        help="round the int8/int4 weights to lose less accuracy (smoothing for dynamic "
        "recipes, error-compensating rounding) over a calibration text; same file format, "
        "slower conversion (loads the model)",
    )
    conv.add_argument(
        "--calibration-text",
        default=None,
        metavar="FILE",
        help="the text --calibrate uses (default: genapi's own prose, data/calibration_prose.txt)",
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
    _add_metadata_args(conv)

    bund = sub.add_parser(
        "bundle", help="wrap a converted .tflite and its tokenizer into a .task or .litertlm"
    )
    bund.add_argument("model", help="a .tflite written by genapi convert")
    bund.add_argument(
        "--tokenizer", required=True, help="the checkpoint (folder, hub id or .gguf) it came from"
    )
    bund.add_argument(
        "-o", "--output", required=True, help="output path ending in .task or .litertlm"
    )
    _add_metadata_args(bund)

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


# ---- bundles (.task, .litertlm)

# Metadata options: (flag, MetadataOverrides field, help).
_METADATA_TEXT_ARGS = (
    ("--user-prefix", "user_prefix", "text before each user message"),
    ("--user-suffix", "user_suffix", "text after each user message"),
    ("--model-prefix", "model_prefix", "text that opens the model's reply"),
    ("--model-suffix", "model_suffix", "text that closes the model's reply"),
    ("--system-prefix", "system_prefix", "text before a system message"),
    ("--system-suffix", "system_suffix", "text after a system message"),
)


def _add_metadata_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "bundle metadata (default: from the checkpoint's tokenizer; \\n in texts is a newline)"
    )
    group.add_argument(
        "--start-token", default=None, help="token the engine puts before prompts (id, text, none)"
    )
    group.add_argument(
        "--stop-tokens",
        default=None,
        help="comma-separated tokens that end generation (ids or texts)",
    )
    for flag, _, text in _METADATA_TEXT_ARGS:
        group.add_argument(flag, default=None, help=text)
    group.add_argument(
        "--chat-template", default=None, help="a Jinja chat template file to read the texts from"
    )
    group.add_argument(
        "--jinja-template",
        default=None,
        help="a Jinja chat template file stored as is (.litertlm only)",
    )
    group.add_argument(
        "--max-num-tokens",
        type=int,
        default=None,
        help="context size (.litertlm only; default: KV cache)",
    )


def _unescape(text: str) -> str:
    """Turn the escapes \\n, \\t, \\r and \\\\ typed on a command line into characters."""
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([ntr\\])", lambda m: table[m.group(1)], text)


def _read_text_file(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _metadata_overrides(args: argparse.Namespace):
    """The metadata options given, or None if there are none."""
    from genapi.bundle import MetadataOverrides

    values = {}
    if args.start_token is not None:
        values["start_token"] = args.start_token
    if args.stop_tokens is not None:
        values["stop_tokens"] = [t for t in args.stop_tokens.split(",") if t]
    for _, field, _ in _METADATA_TEXT_ARGS:
        if getattr(args, field) is not None:
            values[field] = _unescape(getattr(args, field))
    if args.chat_template is not None:
        values["chat_template"] = _read_text_file(args.chat_template, "--chat-template")
    if args.jinja_template is not None:
        values["jinja_template"] = _read_text_file(args.jinja_template, "--jinja-template")
    if args.max_num_tokens is not None:
        values["max_num_tokens"] = args.max_num_tokens
    return MetadataOverrides(**values) if values else None


def _bundle_metadata(output: str, tokenizer, overrides):
    """The metadata for `output`, checked against the bundle kind before any long work."""
    from genapi.bundle import bundle_kind, metadata_from_tokenizer
    from genapi.bundle.metadata import describe
    from genapi.bundle.protos import llm_parameters_bytes

    metadata = metadata_from_tokenizer(tokenizer, overrides=overrides)
    if bundle_kind(output) == "task":
        if tokenizer.kind != "sentencepiece":
            raise ValueError(
                f"{output!r}: a .task carries only a SentencePiece tokenizer, and this model's "
                f"is {tokenizer.kind!r}; write a .litertlm instead (-o model.litertlm)"
            )
        llm_parameters_bytes(metadata, tokenizer)  # raises for what a .task cannot hold
    logger.info("bundle metadata: %s", describe(metadata, tokenizer))
    return metadata


def _convert_bundle(args: argparse.Namespace) -> int:
    """`convert -o model.task|.litertlm`: convert to a temporary .tflite beside the output,
    bundle it, and leave nothing else behind."""
    import io
    import tempfile

    from genapi.bundle import write_bundle
    from genapi.loading.checkpoint import open_checkpoint, open_tokenizer

    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder!r} does not exist")
    overrides = _metadata_overrides(args)
    if overrides is not None and overrides.max_num_tokens is not None:
        if overrides.max_num_tokens > args.kv_cache_len:
            raise ValueError(
                f"--max-num-tokens {overrides.max_num_tokens} exceeds --kv-cache-len "
                f"{args.kv_cache_len}"
            )
    start = time.perf_counter()
    tokenizer = open_tokenizer(open_checkpoint(args.source, architecture=args.architecture))
    metadata = _bundle_metadata(args.output, tokenizer, overrides)

    fd, model = tempfile.mkstemp(prefix=f".{os.path.basename(args.output)}.", suffix=".tflite",
                                 dir=folder)  # fmt: skip
    os.close(fd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "wrote" line names the temp file
            _convert(_without_metadata(args, output=model))
        path = write_bundle(model, tokenizer, args.output, metadata=metadata)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(model)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def _without_metadata(args: argparse.Namespace, *, output: str) -> argparse.Namespace:
    """`args` for converting to the .tflite `output`: the metadata options left out."""
    cleared = {f: None for f in ("start_token", "stop_tokens", "chat_template", "jinja_template")}
    cleared.update({field: None for _, field, _ in _METADATA_TEXT_ARGS})
    return argparse.Namespace(**{**vars(args), **cleared, "max_num_tokens": None, "output": output})


def _bundle(args: argparse.Namespace) -> int:
    from genapi.bundle import bundle_kind, write_bundle
    from genapi.loading.checkpoint import open_checkpoint, open_tokenizer

    if bundle_kind(args.output) is None:
        raise ValueError(f"output {args.output!r} must end in .task or .litertlm")
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"no such .tflite file: {args.model!r}")
    start = time.perf_counter()
    tokenizer = open_tokenizer(open_checkpoint(args.tokenizer))
    metadata = _bundle_metadata(args.output, tokenizer, _metadata_overrides(args))
    path = write_bundle(args.model, tokenizer, args.output, metadata=metadata)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def _generate_bundle(args: argparse.Namespace) -> int:
    """Generate with a .task/.litertlm: in LiteRT-LM's engine, or genapi's runner on the
    extracted model, both fed the prompt the bundle's metadata describes."""
    from genapi.bundle import read_bundle
    from genapi.bundle.engine import engine_available

    if args.tokenizer is not None:
        raise ValueError(f"{args.source!r} carries its own tokenizer; drop --tokenizer")
    contents = read_bundle(args.source)  # checked first: the engine aborts on a bad file
    engine = args.engine
    if engine == "auto":
        engine = "litert-lm" if engine_available() else "genapi"
    _sampling(args)
    with _native_logs_hidden(not args.verbose):
        if engine == "litert-lm":
            return _run_bundle_engine(args, contents)
        return _run_bundle_genapi(args, contents)


def _bundle_chat(reply, prompt: str | None) -> int:
    """Answer `prompt`, or each line of stdin as a conversation of its own."""
    if prompt is not None:
        print(f"> {prompt}", file=sys.stderr)
        reply(prompt)
        return 0
    print("[each line is a new single-turn chat; an empty line or /exit ends]", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return 0
        if not line or line in ("/exit", "/quit"):
            return 0
        reply(line)


def _run_bundle_engine(args: argparse.Namespace, contents) -> int:
    from genapi.bundle.engine import engine_stream, open_engine

    sampling = _sampling(args)
    start = time.perf_counter()
    engine = open_engine(contents.path, threads=args.threads)
    print(f"[{contents.path.name}, LiteRT-LM engine CPU, {args.threads} threads, loaded in "
          f"{time.perf_counter() - start:.1f} s]", file=sys.stderr)  # fmt: skip

    def reply(text: str) -> None:
        chunks = engine_stream(
            engine,
            text,
            max_new_tokens=args.max_new_tokens,
            chat=not args.no_chat,
            sampling=sampling,
            vocab_size=contents.shape.vocab_size,
        )
        began, count = time.perf_counter(), 0
        for chunk in chunks:
            count += 1
            print(chunk, end="", flush=True)
        print()
        seconds = time.perf_counter() - began
        print(f"[{count} tokens in {seconds:.2f} s, LiteRT-LM]", file=sys.stderr)

    try:
        return _bundle_chat(reply, args.prompt)
    finally:
        engine = None
        gc.collect()


def _run_bundle_genapi(args: argparse.Namespace, contents) -> int:
    from genapi.bundle import extracted_model
    from genapi.runtime import LiteRTGenerator

    sampling = _sampling(args)
    tokenizer = contents.tokenizer()
    metadata = contents.metadata(tokenizer)
    with extracted_model(contents) as model_path:
        generator = LiteRTGenerator(model_path, num_threads=args.threads)
        print(f"[{contents.path.name}, genapi runner (LiteRT CPU), {args.threads} threads]",
              file=sys.stderr)  # fmt: skip

        def reply(text: str) -> None:
            ids = metadata.prompt_ids(tokenizer, text, chat=not args.no_chat)
            tokens = generator.generate(
                ids,
                max_new_tokens=args.max_new_tokens,
                sampling=sampling,
                stop_ids=metadata.stop_token_ids,
            )
            _stream(tokenizer, tokens, limit=args.max_new_tokens)
            stats = generator.stats
            print(f"[prefill {stats.prompt_tokens} tokens: {stats.prefill_tokens_per_second:.1f} "
                  f"tok/s; decode {stats.decode_tokens} tokens: "
                  f"{stats.decode_tokens_per_second:.1f} tok/s]", file=sys.stderr)  # fmt: skip

        try:
            return _bundle_chat(reply, args.prompt)
        finally:
            generator = None
            gc.collect()


def _part_override(text: str) -> tuple[str, str]:
    part, sep, name = text.partition("=")
    if not sep or part not in PARTS or name not in RECIPES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PART=RECIPE with PART one of {', '.join(PARTS)} and RECIPE one of "
            f"{', '.join(RECIPES)}"
        )
    return part, name


def _quant_recipe(args: argparse.Namespace):
    from genapi.export.quantize import recipe

    return recipe(args.quantize, block_size=args.block_size, overrides=dict(args.quantize_part))


def _calibration_ids(args: argparse.Namespace, ckpt, quant) -> list[int] | None:
    """Token ids of the calibration text, when `--calibrate` is given."""
    if args.calibration_text is not None and not args.calibrate:
        raise ValueError("--calibration-text applies only with --calibrate")
    if not args.calibrate:
        return None
    if not any(part.scheme in ("int8", "int4") for part in quant.parts.values()):
        raise ValueError(
            f"--calibrate applies to int8 and int4 recipes (dynamic_int8, weight_only_int8, "
            f"dynamic_int4), not to --quantize {quant.name}"
        )
    from genapi.evaluation import text_ids
    from genapi.export.calibrate import default_text
    from genapi.loading.checkpoint import open_tokenizer

    text = default_text()
    if args.calibration_text is not None:
        if os.path.isdir(args.calibration_text):
            raise ValueError(f"calibration text {args.calibration_text!r} is a folder, not a file")
        if not os.path.isfile(args.calibration_text):
            raise FileNotFoundError(f"no such calibration text: {args.calibration_text!r}")
        with open(args.calibration_text, encoding="utf-8") as f:
            text = f.read()
    ids = text_ids(open_tokenizer(ckpt), text)
    if len(ids) < 64:
        raise ValueError(
            f"calibration text {args.calibration_text!r} has {len(ids)} tokens; give at least "
            "64 (a few hundred words of ordinary prose)"
        )
    return ids


def _convert(args: argparse.Namespace) -> int:
    from genapi.bundle import bundle_kind
    from genapi.export.llm import export_llm
    from genapi.loading.checkpoint import model_weights, open_checkpoint
    from genapi.models import build_model

    if bundle_kind(args.output) is not None:
        return _convert_bundle(args)
    if _metadata_overrides(args) is not None:
        raise ValueError(
            "the bundle metadata options apply only to .task and .litertlm outputs, "
            f"not to {args.output!r}"
        )
    if not args.output.endswith(".tflite"):
        raise ValueError(f"output {args.output!r} must end in .tflite, .task or .litertlm")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder!r} does not exist")
    start = time.perf_counter()
    ckpt = open_checkpoint(args.source, architecture=args.architecture)
    quant = _quant_recipe(args)
    calibration = _calibration_ids(args, ckpt, quant)
    path = export_llm(
        build_model(ckpt.config, device="meta"),
        args.output,
        prefill_lengths=args.prefill_lengths,
        kv_cache_len=args.kv_cache_len,
        kv_layout=args.kv_layout,
        mask_input=args.mask_input,
        prefill_logits=args.prefill_logits,
        quantize=quant,
        weights=model_weights(ckpt),
        progress=True,
        calibration=calibration,
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
    model = load(ckpt, progress=True)
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


# The recipe the demo converts with: the best measured trade-off of size, speed and agreement
# with the float model on SmolLM2 (see benchmarks/quantization.py and runtime_speed.py).
DEMO_RECIPE = "dynamic_int8"


def _converter_fingerprint() -> str:
    """A short hash of the sources that decide what a converted file holds, so that the
    demo converts again after genapi changes instead of running a file an older one wrote."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for folder in ("export", "layers", "models"):
        for source in sorted((root / folder).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def _demo(args: argparse.Namespace) -> int:
    """Convert the embedded SmolLM2-135M-Instruct once (reused later) and run the file."""
    from genapi.defaults import DEFAULT_PROMPT, default_checkpoint
    from genapi.export.llm import export_llm
    from genapi.loading.checkpoint import model_weights, open_checkpoint, open_tokenizer
    from genapi.models import build_model

    ckpt = open_checkpoint(default_checkpoint())
    cache = os.environ.get("GENAPI_CACHE", os.path.expanduser("~/.cache/genapi"))
    os.makedirs(cache, exist_ok=True)
    stem = f"{ckpt.config.name}-{DEMO_RECIPE}"
    path = os.path.join(cache, f"{stem}-{_converter_fingerprint()}.tflite")
    if not os.path.isfile(path):
        # Files an earlier genapi wrote (and their weight caches) are out of date.
        for name in os.listdir(cache):
            if name.startswith(stem) and not name.startswith(os.path.basename(path)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(cache, name))
        print(f"[converting {ckpt.path.name} to {path} ({DEMO_RECIPE})]", file=sys.stderr)
        start = time.perf_counter()
        meta = build_model(ckpt.config, device="meta")
        # The runtime note on hybrid kernels is for users choosing a recipe, not the demo.
        note = logging.getLogger("genapi.export.llm")
        level, note.level = note.level, logging.ERROR
        try:
            export_llm(meta, path, quantize=DEMO_RECIPE, weights=model_weights(ckpt), progress=True)
        finally:
            note.setLevel(level)
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
            from genapi.bundle import bundle_kind

            if bundle_kind(args.source) is not None:
                return _generate_bundle(args)
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
        if args.command == "bundle":
            return _bundle(args)
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
