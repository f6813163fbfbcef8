"""Export: lower traced models to TFLite and write `.tflite` files."""

from genapi.export.inspect import format_report, inspect_model
from genapi.export.tflite_writer import (
    INT4,
    LazyBuffer,
    ModelBuilder,
    Quantization,
    SubgraphBuilder,
    schema,
)

__all__ = [
    "INT4",
    "LazyBuffer",
    "ModelBuilder",
    "Quantization",
    "SubgraphBuilder",
    "format_report",
    "inspect_model",
    "schema",
]
