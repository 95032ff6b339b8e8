"""The dashboard's files, and the example downloads the demo serves.

The source tree keeps the dashboard's templates and static files at its top (``templates/``, ``static/``);
building the wheel copies them into this package (``setup.py``), so an installed server finds them here
and a source checkout, installed editable, finds them at the top of the tree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parent.parent


def asset_folder(name: str) -> Path:
    """``templates`` or ``static``: inside the installed package, else at the top of the checkout."""
    for candidate in (_HERE / name, _CHECKOUT / name):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"The demo's {name!r} folder is missing from {_HERE} and {_CHECKOUT}: the package "
                       "was built without its data files.")


#: What the README's and the dashboard's download examples fetch from the uploads folder.
EXAMPLE_TEXT = (
    "Cosmic Rover Mission Control: an example download.\n"
    "Served by GET /download/example.txt from the uploads folder (ROVER_UPLOADS_DIR), with\n"
    "Content-Disposition, Range and conditional requests.\n"
)
#: Size of big.bin, the resumable download example (curl -C -).
BIG_FILE_BYTES = 8 * 1024 * 1024


def _report_pdf() -> bytes:
    """A one-page PDF that says what it is (a valid file: viewers open it)."""
    text = b"BT /F1 18 Tf 72 720 Td (Cosmic Rover mission report: all systems nominal.) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _big_file_blocks() -> bytes:
    seed = hashlib.sha256(b"rover_stream big.bin").digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2048))  # 64 KiB


def write_once(path: Path, content: bytes, repeat: int = 1) -> Path:
    """Write ``content`` (``repeat`` times) to ``path`` unless a file of that size is there; atomically, as
    several workers may race to write it, and without leaving a partial file behind on a full disk."""
    size = len(content) * repeat
    if path.is_file() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(partial, "wb") as f:
            for _ in range(repeat):
                f.write(content)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def ensure_example_files(uploads: Path) -> None:
    """The uploads folder with the files the examples name; files already there are kept."""
    uploads.mkdir(parents=True, exist_ok=True)
    for name, content, repeat in (("example.txt", EXAMPLE_TEXT.encode(), 1), ("report.pdf", _report_pdf(), 1)):
        if not (uploads / name).exists():
            write_once(uploads / name, content, repeat)
    if not (uploads / "big.bin").exists():
        blocks = _big_file_blocks()
        write_once(uploads / "big.bin", blocks, BIG_FILE_BYTES // len(blocks))
