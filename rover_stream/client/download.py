"""Download a file, and continue an interrupted download where it stopped.

While a file downloads, a small sidecar ``<file>.part.json`` holds the URL and the server's validators
(``ETag``, ``Last-Modified``) and total size; it is removed once the file is complete. ``resume=True``
continues a partial file with ``Range: bytes=<size>-`` and ``If-Range: <validator>``: the server answers
206 with the rest when the file is unchanged, or 200 with the whole new file when it changed (or has no
range support), and the download starts over. A partial file without a sidecar (left by another tool) is
continued with ``Range`` alone. The final size is checked against ``Content-Length``/``Content-Range``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from .errors import ConnectionFailed, DownloadError
from .transport import NETWORK_ERRORS, Exchange, open_request

SIDECAR_SUFFIX = ".part.json"
#: Seconds to connect, and then the longest wait for the next bytes of the body.
DOWNLOAD_TIMEOUT = 30.0
#: Most bytes asked of one read.
CHUNK_SIZE = 256 * 1024
#: The name of a download whose URL and response name none.
FALLBACK_NAME = "download"

Progress = Callable[[int, int | None], None]
"""Called with the bytes of the file on disk so far and its total size (None when unknown)."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    #: Bytes of the complete file.
    size: int
    #: Bytes transferred by this call.
    received: int
    #: Where this call's transfer started in the file (0: from the beginning).
    resumed_from: int = 0
    #: A resume was asked but the server sent the whole file (it changed, or serves no ranges).
    restarted: bool = False
    #: A resume found the file complete already (the server answered 416 for a range at its end).
    already_complete: bool = False
    #: The resume was checked against a saved validator (If-Range); False when continued blindly.
    validated: bool = False


def download(url: str, output: str | os.PathLike[str] | None = None, *, resume: bool = False,
             headers: Mapping[str, str] | None = None, directory: str | os.PathLike[str] = ".",
             timeout: float = DOWNLOAD_TIMEOUT, progress: Progress | None = None,
             limit_rate: float | None = None) -> DownloadResult:
    """Download ``url`` to ``output``; or, when ``output`` is None or a folder, into that folder (default
    ``directory``) under the name the server gives (``Content-Disposition``) or the URL's last segment.

    :param resume: continue a partial file (see the module's documentation).
    :param limit_rate: at most this many bytes a second.

    Raises :class:`HTTPError` for an error status, :class:`DownloadError` when the file cannot be completed
    as asked, :class:`ConnectionFailed` when the transfer breaks off (the partial file and its sidecar stay,
    for ``resume``). Interrupted (``KeyboardInterrupt``), it leaves them too.
    """
    target = Path(output) if output is not None else None
    if target is not None and target.is_dir():
        directory, target = target, None
    offset, validator = 0, None
    if resume:
        if target is None:
            target = _find_partial(url, Path(directory)) or Path(directory) / name_from_url(url)
        if target.is_file():
            offset = target.stat().st_size
            validator = _saved_validator(target, url)
    request_headers: dict[str, str | bytes] = {**(headers or {}), "Accept-Encoding": "identity"}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
        if validator:
            request_headers["If-Range"] = validator
    try:
        exchange = open_request("GET", url, request_headers, timeout=timeout)
    except NETWORK_ERRORS as exc:
        raise ConnectionFailed(f"Could not connect to {url}: {exc}.") from exc
    try:
        if exchange.status == 416 and offset and target is not None:
            return _complete_already(exchange, target, offset)
        if exchange.status not in (200, 206):
            raise exchange.error()
        if target is None:
            target = Path(directory) / (name_from_disposition(exchange.header("Content-Disposition"))
                                        or name_from_url(exchange.url))
        if exchange.status == 206:
            start, total = parse_content_range(exchange.header("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url} sent bytes from {start}, but {target} has {offset}: run without "
                                    "--resume to download the whole file again.")
            restarted, mode = False, "ab"
        else:
            restarted, offset, mode = offset > 0, 0, "wb"
            total = _int_or_none(exchange.header("Content-Length"))
        _save_sidecar(target, url, exchange, total)
        with open(target, mode) as out:
            received = _copy(exchange, out, offset, total, progress, limit_rate)
    finally:
        exchange.close()
    size = target.stat().st_size
    if total is not None and size != total:
        raise ConnectionFailed(f"The transfer of {url} stopped at {size} of {total} bytes; run again with "
                               "--resume to continue it.")
    _sidecar(target).unlink(missing_ok=True)
    return DownloadResult(target, size, received, resumed_from=offset, restarted=restarted,
                          validated=bool(validator) and not restarted)


def _copy(exchange: Exchange, out: IO[bytes], offset: int, total: int | None, progress: Progress | None,
          limit_rate: float | None) -> int:
    chunk_size = CHUNK_SIZE if not limit_rate else int(min(CHUNK_SIZE, max(1024, limit_rate / 10)))
    received = 0
    started = time.monotonic()
    if progress is not None:
        progress(offset, total)
    while True:
        try:
            chunk = exchange.response.read1(chunk_size)
        except NETWORK_ERRORS as exc:
            out.flush()
            raise ConnectionFailed(f"The transfer of {exchange.url} broke off after {offset + received} bytes "
                                   f"({exc}); run again with --resume to continue it.") from exc
        if not chunk:
            return received
        out.write(chunk)
        received += len(chunk)
        if progress is not None:
            progress(offset + received, total)
        if limit_rate:
            ahead = received / limit_rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def _complete_already(exchange: Exchange, target: Path, offset: int) -> DownloadResult:
    """416 for a range starting at the partial file's end: complete when the server's size is that."""
    total = exchange.header("Content-Range").rpartition("/")[2]
    if total != str(offset):
        raise DownloadError(f"{target} has {offset} bytes but the file at {exchange.url} has {total or 'fewer'}: "
                            "run without --resume to download it again.")
    _sidecar(target).unlink(missing_ok=True)
    return DownloadResult(target, offset, 0, resumed_from=offset, already_complete=True)


def parse_content_range(value: str) -> tuple[int, int | None]:
    """``bytes 100-199/1000`` as ``(100, 1000)`` (the total is None for ``*``)."""
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first = span.partition("-")[0]
    if unit.lower() != "bytes" or not first.isdigit() or not (total.isdigit() or total == "*"):
        raise DownloadError(f"The server answered 206 with an unusable Content-Range {value!r}.")
    return int(first), int(total) if total.isdigit() else None


def name_from_disposition(value: str) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename*=`` too), reduced to a plain name."""
    if not value:
        return None
    message = Message()
    message["Content-Disposition"] = value
    return _safe_name(message.get_filename())


def name_from_url(url: str) -> str:
    return _safe_name(unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])) or FALLBACK_NAME


def _safe_name(name: str | None) -> str | None:
    """A name to create in the current folder: no folders, no ``..``, no leading dot."""
    if not name:
        return None
    name = name.replace("\\", "/").rpartition("/")[2].strip().lstrip(".")
    return name if name and not any(ord(c) < 32 for c in name) else None


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + SIDECAR_SUFFIX)


def _save_sidecar(target: Path, url: str, exchange: Exchange, total: int | None) -> None:
    state = {"url": url, "etag": exchange.header("ETag") or None,
             "last_modified": exchange.header("Last-Modified") or None, "size": total}
    _sidecar(target).write_text(json.dumps(state) + "\n")


def _load_sidecar(target: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(_sidecar(target).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _saved_validator(target: Path, url: str) -> str | None:
    """What to send as If-Range: the saved ETag when it is strong (If-Range refuses weak ones), else the
    saved Last-Modified date."""
    state = _load_sidecar(target)
    if state is None or state.get("url") != url:
        return None
    etag = state.get("etag")
    if isinstance(etag, str) and etag.startswith('"'):
        return etag
    last_modified = state.get("last_modified")
    return last_modified if isinstance(last_modified, str) else None


def _find_partial(url: str, directory: Path) -> Path | None:
    """The partial file of an earlier download of ``url`` in ``directory``, found by its sidecar (the name
    may have come from Content-Disposition)."""
    for sidecar in sorted(directory.glob("*" + SIDECAR_SUFFIX)):
        state = _load_sidecar(sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)]))
        if state is not None and state.get("url") == url:
            return sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
    return None


def _int_or_none(value: str) -> int | None:
    return int(value) if value.isdigit() else None
