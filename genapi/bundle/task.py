"""MediaPipe `.task` files: an uncompressed zip of the model, a SentencePiece model and
`LlmParameters`.

The zip is written by hand rather than with `zipfile` so that the bytes depend only on the
inputs (fixed entry order, a fixed 1980-01-01 timestamp, no file attributes) and so that each
entry's data starts aligned: 64 bytes for the model, 4 for the rest. The runtimes map entries
in place, and an aligned flatbuffer (and its 64-byte aligned weights) stays aligned. Padding
sits in the local header's extra field, in the record Android's zipalign uses (id 0xD935: the
alignment as two bytes, then zeros). Entries past 4 GiB get ZIP64 records.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MODEL_ENTRY = "TF_LITE_PREFILL_DECODE"
TOKENIZER_ENTRY = "TOKENIZER_MODEL"
METADATA_ENTRY = "METADATA"

MODEL_ALIGNMENT = 64
ENTRY_ALIGNMENT = 4

# Sizes and offsets from this value on need ZIP64 records (a module constant so tests can
# exercise ZIP64 with small files).
ZIP64_LIMIT = 0xFFFFFFFF

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest date zip can hold
_DOS_TIME = 0
_ALIGN_EXTRA_ID = 0xD935
_ZIP64_EXTRA_ID = 0x0001
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipEntry:
    """One entry to store: its name, alignment, and either bytes or a file to copy."""

    name: str
    alignment: int = ENTRY_ALIGNMENT
    data: bytes | None = None
    path: str | os.PathLike | None = None

    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(self.path)

    def chunks(self) -> Iterable[bytes]:
        if self.data is not None:
            yield self.data
            return
        with open(self.path, "rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                yield chunk


@dataclass
class _Written:
    name: bytes
    offset: int  # of the local header
    size: int
    crc: int


def _padding_extra(base: int, alignment: int) -> bytes:
    """An extra field that moves data starting at `base` (without it) to `alignment`."""
    need = -base % alignment
    if need == 0:
        return b""
    while need < 6:  # id, length, alignment: the smallest record is 6 bytes
        need += alignment
    return struct.pack("<HHH", _ALIGN_EXTRA_ID, need - 4, alignment) + bytes(need - 6)


def write_stored_zip(stream: BinaryIO, entries: Iterable[ZipEntry]) -> None:
    """Write `entries` uncompressed, in order, with data aligned, to a seekable `stream`."""
    written: list[_Written] = []
    for entry in entries:
        name = entry.name.encode("ascii")
        offset = stream.tell()
        size = entry.size()
        big = size >= ZIP64_LIMIT
        zip64 = struct.pack("<HHQQ", _ZIP64_EXTRA_ID, 16, size, size) if big else b""
        base = offset + 30 + len(name) + len(zip64)
        extra = zip64 + _padding_extra(base, entry.alignment)
        header_size = 30 + len(name) + len(extra)
        stream.write(_local_header(name, extra, crc=0, size=size, big=big))

        crc = 0
        for chunk in entry.chunks():
            crc = zlib.crc32(chunk, crc)
            stream.write(chunk)
        end = stream.tell()
        if end - offset - header_size != size:
            raise ValueError(f"{entry.path} changed size while it was being copied")
        stream.seek(offset + 14)
        stream.write(struct.pack("<I", crc))
        stream.seek(end)
        written.append(_Written(name=name, offset=offset, size=size, crc=crc))

    directory_start = stream.tell()
    for item in written:
        stream.write(_central_header(item))
    _write_end(stream, len(written), directory_start, stream.tell() - directory_start)


def _local_header(name: bytes, extra: bytes, *, crc: int, size: int, big: bool) -> bytes:
    stored = 0xFFFFFFFF if big else size
    version = 45 if big else 20
    return struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, version, 0, 0, _DOS_TIME, _DOS_DATE, crc, stored, stored,
        len(name), len(extra),
    ) + name + extra  # fmt: skip


def _central_header(item: _Written) -> bytes:
    fields = []
    size = item.size
    offset = item.offset
    if size >= ZIP64_LIMIT:
        fields += [size, size]
        size = 0xFFFFFFFF
    if offset >= ZIP64_LIMIT:
        fields.append(offset)
        offset = 0xFFFFFFFF
    extra = struct.pack(f"<HH{len(fields)}Q", _ZIP64_EXTRA_ID, 8 * len(fields), *fields)
    extra = extra if fields else b""
    version = 45 if fields else 20
    return struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, 0, 0, _DOS_TIME, _DOS_DATE,
        item.crc, size, size, len(item.name), len(extra), 0, 0, 0, 0, offset,
    ) + item.name + extra  # fmt: skip


def _write_end(stream: BinaryIO, count: int, start: int, size: int) -> None:
    if start >= ZIP64_LIMIT or size >= ZIP64_LIMIT:
        record = stream.tell()
        stream.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size,
                                 start))  # fmt: skip
        stream.write(struct.pack("<IIQI", 0x07064B50, 0, record, 1))
        start = size = 0xFFFFFFFF
    stream.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, start, 0))


def task_entries(
    *, model_path: str | os.PathLike, tokenizer_model: bytes, metadata: bytes
) -> list[ZipEntry]:
    """The three entries of an LLM `.task`, in the order they are written."""
    return [
        ZipEntry(MODEL_ENTRY, alignment=MODEL_ALIGNMENT, path=model_path),
        ZipEntry(TOKENIZER_ENTRY, data=tokenizer_model),
        ZipEntry(METADATA_ENTRY, data=metadata),
    ]


def read_task_entries(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Entry name -> (offset of its data in the file, size) of a `.task` file.

    Raises:
        ValueError: if the file is not a zip, an entry is compressed, or one of the three
            LLM entries is missing.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            entries = {}
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(
                        f"{str(path)!r}: entry {info.filename!r} is compressed; a .task must "
                        "store its entries uncompressed"
                    )
                f.seek(info.header_offset)
                header = f.read(30)
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                entries[info.filename] = (
                    info.header_offset + 30 + name_len + extra_len,
                    info.file_size,
                )
    except zipfile.BadZipFile as error:
        raise ValueError(f"{str(path)!r} is not a .task file (not a zip: {error})") from None
    missing = [e for e in (MODEL_ENTRY, TOKENIZER_ENTRY, METADATA_ENTRY) if e not in entries]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the entries {missing}; an LLM .task holds "
            f"{MODEL_ENTRY}, {TOKENIZER_ENTRY} and {METADATA_ENTRY}"
        )
    return entries


def read_range(path: str | os.PathLike, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{str(path)!r} is truncated")
    return data
