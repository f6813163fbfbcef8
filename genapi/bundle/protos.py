"""The metadata messages bundles carry, built from `BundleMetadata`.

- `.task` (MediaPipe): `odml.infra.proto.LlmParameters`. No light package ships its compiled
  module, so the few fields genapi writes are declared here from their field numbers and built
  with the protobuf runtime; the bytes are what MediaPipe's own definition parses.
- `.litertlm` (LiteRT-LM): `litert.lm.proto.LlmMetadata`, compiled module from
  `litert-lm-builder`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

if TYPE_CHECKING:
    from genapi.bundle.metadata import BundleMetadata
    from genapi.tokenizer import Tokenizer

_PACKAGE = "odml.infra.proto"
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def _message(name: str, fields: list[tuple[str, int, int, int, str]]):
    proto = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = proto.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    return proto


@functools.cache
def llm_parameters_class() -> type:
    """The `LlmParameters` message class (only the fields a `.task` bundle needs).

    Field numbers, as MediaPipe's `llm_params.proto` defines them: stop_tokens 5 (repeated
    string), start_token 6 (string), prompt_templates 17 (user/model/system templates 1/2/3,
    each a prefix 1 and suffix 2).
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="genapi/odml_llm_params.proto", package=_PACKAGE, syntax="proto3"
    )
    prefix = f".{_PACKAGE}."
    file.message_type.extend(
        [
            _message(
                "PromptTemplate",
                [
                    ("prompt_prefix", 1, _STRING, _OPTIONAL, ""),
                    ("prompt_suffix", 2, _STRING, _OPTIONAL, ""),
                ],
            ),
            _message(
                "PromptTemplates",
                [
                    ("user_template", 1, _MESSAGE, _OPTIONAL, prefix + "PromptTemplate"),
                    ("model_template", 2, _MESSAGE, _OPTIONAL, prefix + "PromptTemplate"),
                    ("system_template", 3, _MESSAGE, _OPTIONAL, prefix + "PromptTemplate"),
                ],
            ),
            _message(
                "LlmParameters",
                [
                    ("stop_tokens", 5, _STRING, _REPEATED, ""),
                    ("start_token", 6, _STRING, _OPTIONAL, ""),
                    ("prompt_templates", 17, _MESSAGE, _OPTIONAL, prefix + "PromptTemplates"),
                ],
            ),
        ]
    )
    # A private pool: never clashes with a real MediaPipe definition loaded in the process.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.LlmParameters"))


def llm_parameters_bytes(metadata: BundleMetadata, tokenizer: Tokenizer) -> bytes:
    """Serialized `LlmParameters`: tokens as their texts, as MediaPipe stores them.

    Raises:
        ValueError: if the metadata holds what a `.task` cannot carry (a Jinja template, a
            context size).
    """
    if metadata.jinja_template is not None:
        raise ValueError(
            "a .task bundle cannot carry a Jinja chat template (MediaPipe has no field for "
            "it); write a .litertlm, or set the prompt template with --user-prefix, "
            "--user-suffix and --model-prefix"
        )
    if metadata.max_num_tokens is not None:
        raise ValueError(
            f"a .task bundle cannot carry max tokens ({metadata.max_num_tokens}); its engine "
            "reads the context size from the model's KV cache. Write a .litertlm to set it"
        )
    params = llm_parameters_class()()
    if metadata.start_token_id is not None:
        params.start_token = tokenizer.id_to_token(metadata.start_token_id)
    params.stop_tokens.extend(tokenizer.id_to_token(t) for t in metadata.stop_token_ids)
    template = metadata.prompt_template
    if not template.is_empty:
        templates = params.prompt_templates
        for role in ("user", "model", "system"):
            part = getattr(templates, f"{role}_template")
            part.prompt_prefix = getattr(template, f"{role}_prefix")
            part.prompt_suffix = getattr(template, f"{role}_suffix")
    return params.SerializeToString(deterministic=True)


def parse_llm_parameters(data: bytes, tokenizer: Tokenizer) -> BundleMetadata:
    """`BundleMetadata` from serialized `LlmParameters` (token texts looked up in `tokenizer`).

    Raises:
        ValueError: if the bytes do not parse or name tokens the tokenizer does not have.
    """
    from google.protobuf.message import DecodeError

    from genapi.bundle.metadata import BundleMetadata, PromptTemplate

    params = llm_parameters_class()()
    try:
        params.ParseFromString(data)
    except DecodeError as error:
        raise ValueError(f"the METADATA entry is not an LlmParameters message: {error}") from None

    def token(text: str) -> int:
        token_id = tokenizer.token_to_id(text)
        if token_id is None:
            raise ValueError(f"the METADATA entry names token {text!r}, which the tokenizer lacks")
        return token_id

    templates = params.prompt_templates
    fields = {}
    for role in ("user", "model", "system"):
        part = getattr(templates, f"{role}_template")
        fields[f"{role}_prefix"] = part.prompt_prefix
        fields[f"{role}_suffix"] = part.prompt_suffix
    return BundleMetadata(
        start_token_id=token(params.start_token) if params.start_token else None,
        stop_token_ids=tuple(token(t) for t in params.stop_tokens),
        prompt_template=PromptTemplate(**fields),
    )


def llm_metadata_bytes(metadata: BundleMetadata, *, max_num_tokens: int) -> bytes:
    """Serialized LiteRT-LM `LlmMetadata` with the context size `max_num_tokens`."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    proto = llm_metadata_pb2.LlmMetadata()
    if metadata.start_token_id is not None:
        proto.start_token.token_ids.ids.append(metadata.start_token_id)
    for stop in metadata.stop_token_ids:
        proto.stop_tokens.add().token_ids.ids.append(stop)
    template = metadata.prompt_template
    if not template.is_empty:
        for role in ("user", "model", "system"):
            affixes = getattr(proto.prompt_templates, role)
            affixes.prefix = getattr(template, f"{role}_prefix")
            affixes.suffix = getattr(template, f"{role}_suffix")
    if metadata.jinja_template is not None:
        proto.jinja_prompt_template = metadata.jinja_template
    proto.max_num_tokens = max_num_tokens
    # Required by the builder's validation; genapi's models do neither.
    proto.supports_thinking = False
    proto.supports_function_calling = False
    proto.llm_model_type.generic_model.SetInParent()
    return proto.SerializeToString(deterministic=True)


def parse_llm_metadata(data: bytes) -> BundleMetadata:
    """`BundleMetadata` from serialized `LlmMetadata` (token ids only; token texts are not
    resolved).

    Raises:
        ValueError: if the bytes do not parse or hold no stop token given by ids.
    """
    from google.protobuf.message import DecodeError
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    from genapi.bundle.metadata import BundleMetadata, PromptTemplate

    proto = llm_metadata_pb2.LlmMetadata()
    try:
        proto.ParseFromString(data)
    except DecodeError as error:
        raise ValueError(f"the LlmMetadata section does not parse: {error}") from None
    start = list(proto.start_token.token_ids.ids) if proto.HasField("start_token") else []
    stops = tuple(i for stop in proto.stop_tokens for i in stop.token_ids.ids[:1])
    fields = {}
    for role in ("user", "model", "system"):
        affixes = getattr(proto.prompt_templates, role)
        fields[f"{role}_prefix"] = affixes.prefix
        fields[f"{role}_suffix"] = affixes.suffix
    return BundleMetadata(
        start_token_id=start[0] if start else None,
        stop_token_ids=stops,
        prompt_template=PromptTemplate(**fields),
        jinja_template=proto.jinja_prompt_template or None,
        max_num_tokens=proto.max_num_tokens or None,
    )
