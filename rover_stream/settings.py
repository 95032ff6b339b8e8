"""Every setting of rover_stream, declared once.

Each :class:`Setting` carries its name, how to parse it, its default, what values are allowed and a help
text. Values come, in order of precedence, from the ``config`` mapping given to :class:`RoverStream` (or
:func:`rover_stream.create_app`), the Flask app's config, the environment (``ROVER_<NAME>``), the hosting
platforms' conventional variables for a few (``HOST``/``PORT``, ``WEB_CONCURRENCY``, ``LOG_LEVEL``), and
the default. :func:`load` validates them all at start-up and raises
:class:`~rover_stream.errors.ConfigError` naming the setting, the bad value and what is allowed. The gunicorn
configuration (:mod:`rover_stream.server.config`) reads the same declarations, so the server and the app can
never disagree, and ``docs/settings.md`` is generated from them (``python -m rover_stream.settings``; a test
keeps it current).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .errors import ConfigError

PREFIX = "ROVER_"
log = logging.getLogger("rover_stream.settings")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


@dataclass(frozen=True)
class Setting:
    """One setting: ``parse`` turns a raw value (a string from the environment, or any Python value from a
    config mapping) into the typed value or raises ``ValueError`` with the sentence that says what is
    allowed."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    allowed: str
    sensitive: bool = False  # never echoed in errors or logs
    shown_default: str | None = None  # how the docs show the default, when not str(default)
    #: The value hosting platforms' conventional variables give when ``ROVER_<NAME>`` is unset (PORT...),
    #: and their names, for the docs and error messages.
    convention: Callable[[Mapping[str, str]], str | None] | None = None
    convention_names: str = ""

    @property
    def key(self) -> str:
        return PREFIX + self.name


# -- parsers -------------------------------------------------------------------------------------------------

def _integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError
        value = int(raw.strip()) if isinstance(raw, str) else int(raw)
        if isinstance(raw, float) and raw != value:
            raise ValueError
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError
        return value

    return parse


def _seconds(minimum: float = 0.0, exclusive: bool = True) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError
        if value < minimum or (exclusive and value == minimum):
            raise ValueError
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _text(raw: Any) -> str:
    if not isinstance(raw, (str, os.PathLike)):
        raise ValueError
    text = os.fspath(raw).strip()
    if not text:
        raise ValueError
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in choices:
            raise ValueError
        return text

    return parse


_BIND = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})|unix:/[^\n]+")


def _bind(raw: Any) -> str:
    text = str(raw).strip()
    match = _BIND.fullmatch(text)
    if not match or (match.group(2) is not None and int(match.group(2)) > 65535):
        raise ValueError
    return text


#: Matched with fullmatch: ``$`` would also match before a final newline ("news\n" must not pass).
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def _channel(raw: Any) -> str:
    text = str(raw).strip()
    if not CHANNEL_NAME.fullmatch(text):
        raise ValueError
    return text


def _host_port(environ: Mapping[str, str]) -> str | None:
    """``HOST:PORT`` from the platform variables (Heroku, Render, Cloud Run set ``PORT``)."""
    host, port = environ.get("HOST", "").strip(), environ.get("PORT", "").strip()
    if not host and not port:
        return None
    host = host or DEFAULT_HOST
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{port or DEFAULT_PORT}"


def _variable(name: str) -> Callable[[Mapping[str, str]], str | None]:
    def read(environ: Mapping[str, str]) -> str | None:
        return environ.get(name) or None

    return read


def user_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the server writes what it generates when ``ROVER_DATA_DIR`` is unset: the user's data folder
    (``$XDG_DATA_HOME/rover-stream``, else ``~/.local/share/rover-stream``), never the installed package."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME", "").strip()
    if base and os.path.isabs(base):
        return Path(base) / "rover-stream"
    try:
        return Path.home() / ".local" / "share" / "rover-stream"
    except RuntimeError:  # no home directory (a bare container user): the working directory
        return Path.cwd() / "rover-stream-data"


def _readable_file(kind: str, check: Callable[[str], bool]) -> Callable[[Any], str]:
    """A path to a readable file whose text passes ``check`` (a quick look: the keys in it are parsed
    where tokens are checked)."""

    def parse(raw: Any) -> str:
        path = Path(_text(raw)).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ValueError from None
        if not check(text):
            raise ValueError
        return str(path.absolute())

    parse.__name__ = kind
    return parse


def _looks_like_jwks(text: str) -> bool:
    try:
        keys = json.loads(text).get("keys")
    except (ValueError, AttributeError):
        return False
    return isinstance(keys, list) and bool(keys)


def _secret(raw: Any) -> str:
    text = str(raw)
    if len(text) < 32:  # RFC 7518 3.2: an HS256 key at least as long as the hash
        raise ValueError
    return text


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def parse_cluster_url(url: str) -> dict[str, Any]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/]`` as the cluster client's arguments.
    Raises ValueError for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or f"{scheme}://" not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    rest = rest.split("?", 1)[0].rstrip("/")
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        hosts, userinfo = rest, ""
    username, _, password = userinfo.partition(":")
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a cluster node is host:port, not {item!r}")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError("a Redis Cluster URL names at least one node")
    return {"nodes": nodes, "username": unquote(username) or None, "password": unquote(password) or None,
            "ssl": scheme == "rediss+cluster"}


def _redis_url(raw: Any) -> str:
    text = str(raw).strip()
    if text.startswith(CLUSTER_SCHEMES):
        parse_cluster_url(text)
    elif not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError
    return text


def _origins(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        items = [str(item).strip() for item in raw]
    else:
        items = [item.strip() for item in str(raw).split(",")]
    items = [item.rstrip("/") for item in items if item]
    for item in items:
        if item != "*" and not re.fullmatch(r"https?://[^/\s]+", item):
            raise ValueError
    return tuple(items)


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and raw.strip() in ("", "auto")):
            return None
        return parse(raw)

    return parse_optional


# -- the declarations ----------------------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    # Server (read by rover_stream.server.config)
    Setting("BIND", _bind, f"{DEFAULT_HOST}:{DEFAULT_PORT}",
            "Address gunicorn listens on. Unset: HOST and PORT when either is set (as hosting platforms "
            f"do; HOST defaults to {DEFAULT_HOST}, PORT to {DEFAULT_PORT}).", "HOST:PORT, [IPv6]:PORT or unix:/path",
            convention=_host_port, convention_names="HOST, PORT"),
    Setting("WORKERS", _integer(1, 256), 1,
            "Number of gunicorn worker processes (unset: WEB_CONCURRENCY). More than one needs the Redis "
            "engine to share events: the server refuses to start without ROVER_REDIS_URL.",
            "an integer from 1 to 256", convention=_variable("WEB_CONCURRENCY"), convention_names="WEB_CONCURRENCY"),
    Setting("WORKER_CONNECTIONS", _integer(10, 1_000_000), 1000,
            "Greenlets (simultaneous connections) per gevent worker.", "an integer from 10 to 1000000"),
    Setting("TIMEOUT", _integer(1, 86_400), 30,
            "Seconds a worker may stay silent (blocked by CPU work) before the master kills it.",
            "an integer number of seconds from 1 to 86400"),
    Setting("GRACEFUL_TIMEOUT", _integer(1, 86_400), 30,
            "Upper bound in seconds for a worker to finish after SIGTERM. Streams end themselves much sooner.",
            "an integer number of seconds from 1 to 86400"),
    Setting("KEEPALIVE", _integer(0, 3600), 5,
            "Seconds to wait for the next request on a keep-alive connection.",
            "an integer number of seconds from 0 to 3600"),
    Setting("LOG_LEVEL", _choice("debug", "info", "warning", "error", "critical"), "info",
            "Log level of gunicorn and the app (unset: LOG_LEVEL).", "debug, info, warning, error or critical",
            convention=_variable("LOG_LEVEL"), convention_names="LOG_LEVEL"),
    Setting("METRICS_INTERVAL", _seconds(exclusive=False), 2.0,
            "Seconds between the server.metrics events each worker publishes (the dashboard's and /metrics' "
            "event stream); 0 turns them off.", "a number of seconds >= 0"),
    Setting("LOG_FORMAT", _choice("plain", "json"), "plain",
            "The app's log lines (stream open/close/drop, errors): plain text, or one JSON object per line.",
            "plain or json"),
    # Streams
    Setting("MAX_STREAMS", _optional(_integer(1)), None,
            "Open streams allowed per worker; beyond it new streams get 503 with Retry-After. "
            "Empty or 'auto' means 90% of WORKER_CONNECTIONS, leaving room for /health and short requests.",
            "an integer >= 1, or auto", shown_default="auto"),
    Setting("HEARTBEAT_INTERVAL", _seconds(), 15.0,
            "Seconds of producer silence after which an SSE stream sends a ': ping' comment. It keeps proxies "
            "from cutting idle streams and detects vanished clients within two intervals.",
            "a number of seconds > 0"),
    Setting("RETRY_MS", _integer(0, 86_400_000), 3000,
            "The 'retry:' hint at the start of every SSE stream: how long EventSource waits before reconnecting.",
            "an integer number of milliseconds from 0 to 86400000"),
    Setting("SHUTDOWN_RETRY_MS", _integer(0, 86_400_000), 1000,
            "The 'retry:' hint of the final 'shutdown' event sent to every open SSE stream on SIGTERM.",
            "an integer number of milliseconds from 0 to 86400000"),
    Setting("STREAM_QUEUE_SIZE", _integer(1, 1_000_000), 64,
            "Items buffered between a stream's producer and the socket. A full buffer blocks the producer "
            "(backpressure), so memory per stream stays bounded.", "an integer from 1 to 1000000"),
    Setting("WRITE_BATCH_BYTES", _integer(512, 16 * 1024 * 1024), 64 * 1024,
            "CSV, NDJSON and writer output is gathered into chunks of about this size before each socket write.",
            "an integer number of bytes from 512 to 16777216"),
    Setting("FLUSH_INTERVAL", _seconds(), 0.05,
            "Writer output waits at most this long in a partial batch; a CSV/NDJSON row arriving this long "
            "after the previous send goes out at once.",
            "a number of seconds > 0"),
    Setting("FILE_CHUNK_SIZE", _integer(512, 16 * 1024 * 1024), 256 * 1024,
            "Bytes per read when a file is streamed without sendfile (non-gunicorn servers, TLS).",
            "an integer number of bytes from 512 to 16777216"),
    Setting("SEND_TIMEOUT", _seconds(), 60.0,
            "Seconds in which a client that is behind (a download, a stream) must take at least 64 KiB; one "
            "that reads nothing or a trickle is cut. A stream's client that reads nothing at all is cut sooner "
            "if two heartbeat intervals are shorter: the kernel gives up on data left unacknowledged that long "
            "(which is how a vanished client is noticed).",
            "a number of seconds > 0"),
    # Hub
    Setting("HISTORY_SIZE", _integer(0, 10_000_000), 1000,
            "Events each channel keeps for replay to clients that reconnect with Last-Event-ID.",
            "an integer from 0 to 10000000"),
    Setting("HISTORY_TTL", _seconds(), 3600.0,
            "Seconds an event stays in its channel's history.", "a number of seconds > 0"),
    Setting("SUBSCRIBER_QUEUE_SIZE", _integer(1, 1_000_000), 256,
            "Events waiting for one subscriber before the slow-client policy applies.",
            "an integer from 1 to 1000000"),
    Setting("SLOW_CLIENT_POLICY", _choice("disconnect", "drop-oldest"), "disconnect",
            "What happens when a subscriber's queue is full: 'disconnect' ends its stream (it reconnects with "
            "Last-Event-ID and catches up from history); 'drop-oldest' discards its oldest waiting event.",
            "disconnect or drop-oldest"),
    Setting("MAX_CHANNELS", _integer(1, 10_000_000), 10_000,
            "Channels one worker's hub holds at once, with subscribers or (in-process) only a history: beyond it "
            "the idlest channels without subscribers are forgotten, history included; when all have "
            "subscribers, a new channel gets 503 too_many_channels.",
            "an integer from 1 to 10000000"),
    Setting("MAX_CHANNELS_PER_STREAM", _integer(1, 1000), 32,
            "Channels one SSE connection may subscribe to.", "an integer from 1 to 1000"),
    Setting("MAX_BATCH", _integer(1, 100_000), 1000,
            "Most events one POST /api/broadcast may carry as a JSON array (a batch); the body limit "
            "(ROVER_MAX_BODY_BYTES) applies too.", "an integer from 1 to 100000"),
    Setting("DEFAULT_CHANNEL", _channel, "broadcast",
            "Channel of POST /api/broadcast bodies that name none (the {message, timestamp} shape of the SSE "
            "API's broadcast).",
            "a channel name: 1-100 of A-Z a-z 0-9 _ . -, starting with a letter or digit"),
    Setting("PUBLISH_RATE", _seconds(exclusive=False), 0.0,
            "Events a second one client (token subject, else address) may publish through the HTTP API, in "
            "bursts of twice that (429 with Retry-After beyond); 0 for no limit.", "a number >= 0"),
    Setting("MAX_BODY_BYTES", _integer(64, 64 * 1024 * 1024), 64 * 1024,
            "Largest request body accepted by the HTTP API and the demo's POST routes (413 beyond, before "
            "the body is read when Content-Length says so).", "an integer from 64 to 67108864"),
    Setting("BODY_TIMEOUT", _seconds(), 10.0,
            "Seconds in which a request body must arrive whole (408 beyond); after the first 5 s it must also "
            "come at BODY_MIN_RATE or faster. At most 5% of WORKER_CONNECTIONS bodies are read at once (503 "
            "beyond), so slow uploads cannot take every connection.", "a number of seconds > 0"),
    Setting("BODY_MIN_RATE", _seconds(), 1024.0,
            "Bytes a second a request body must average once it has taken 5 s (408 below).", "a number > 0"),
    Setting("SECRET_KEY", _optional(_secret), None,
            "Secret that signs access tokens (JWT, HS256). With it, publishing and private- channels need a "
            "token. Without it the server runs open, and only on a loopback address.",
            "a string of at least 32 characters, or empty", sensitive=True),
    Setting("JWT_PUBLIC_KEY", _optional(_readable_file("public key", lambda t: "-----BEGIN PUBLIC KEY-----" in t)),
            None,
            "Path to a PEM public key (RSA or EC) that checks access tokens signed by another service with its "
            "private key (RS256, ES256 and the like), beside or instead of SECRET_KEY: the auth service keeps "
            "the signing key. Like SECRET_KEY, it turns token checks on.",
            "the path of a readable PEM file holding a PUBLIC KEY, or empty"),
    Setting("JWKS_FILE", _optional(_readable_file("JWKS file", _looks_like_jwks)), None,
            "Path to a JWKS file (JSON {\"keys\": [...]}) of public keys that check access tokens: a token's "
            "'kid' header picks its key. The file is read again when it changes (key rotation without a "
            "restart). Like SECRET_KEY, it turns token checks on.",
            "the path of a readable JSON file with a non-empty 'keys' list, or empty"),
    Setting("JWT_AUDIENCE", _optional(_text), None,
            "When set, an access token must name this audience in its 'aud' claim; when empty, tokens are "
            "accepted whatever their audience.", "a string, or empty"),
    Setting("REDIS_URL", _optional(_redis_url), None,
            "Redis to share the hub across workers and hosts (redis://[:password@]host:port/db), or a Redis "
            "Cluster (redis+cluster://[:password@]host:port,host:port,...: the nodes to start from). Empty: the "
            "hub lives in each worker process.",
            "a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URL, or empty",
            sensitive=True),
    Setting("REDIS_PREFIX", _text, "rover:",
            "Prefix of every Redis key the hub uses (streams are <prefix>ch:<channel>).", "a non-empty string"),
    Setting("REDIS_TIMEOUT", _seconds(), 2.0,
            "Seconds a Redis command may take before publishing answers 503 instead of hanging.",
            "a number of seconds > 0"),
    # WebSocket rooms
    Setting("WS_PING_INTERVAL", _seconds(), 25.0,
            "Seconds between the server's WebSocket pings; a client that misses a pong is closed.",
            "a number of seconds > 0"),
    Setting("WS_MAX_MESSAGE_BYTES", _integer(128, 64 * 1024 * 1024), 1024 * 1024,
            "Largest WebSocket message a client may send (close 1009 beyond).", "an integer from 128 to 67108864"),
    Setting("WS_MESSAGE_RATE", _seconds(), 20.0,
            "Messages a second one connection may send, in bursts of twice that (close 1008 beyond).",
            "a number > 0"),
    Setting("WS_IDLE_TIMEOUT", _seconds(), 600.0,
            "Seconds without a message from the client before its connection is closed (1008).",
            "a number of seconds > 0"),
    Setting("WS_ALLOWED_ORIGINS", _origins, (),
            "Browser origins, besides the server's own, that may open room WebSockets (comma-separated, or *).",
            "comma-separated origins such as https://example.org, or *"),
    Setting("CORS_ORIGINS", _origins, (),
            "Browser origins whose pages may read this server's responses: streams, the API, downloads "
            "(comma-separated, or * for any origin without credentials). Others get no CORS headers.",
            "comma-separated origins such as https://example.org, or *"),
    Setting("ROOM_MAX_MEMBERS", _integer(1, 1_000_000), 1000,
            "Members one room may have in one worker (503 room_full beyond).", "an integer from 1 to 1000000"),
    Setting("ROOM_HISTORY", _integer(0, 10_000), 20,
            "Messages a member is sent when it joins a room, and what a room's channel keeps for replay "
            "(its join/leave events included).", "an integer from 0 to 10000"),
    # Demo and files
    Setting("DATA_DIR", _optional(_text), None,
            "Writable folder for what the server generates (the demo's rover image, its large file and "
            "example downloads). Relative paths are relative to the working directory.", "a folder path",
            shown_default="$XDG_DATA_HOME/rover-stream, else ~/.local/share/rover-stream"),
    Setting("UPLOADS_DIR", _optional(_text), None,
            "Folder the demo serves at GET /download/<filename> (relative paths are relative to the working "
            "directory).", "a folder path", shown_default="DATA_DIR/uploads"),
    Setting("IMAGE_CHUNK_SIZE", _integer(1, 16 * 1024 * 1024), 4096,
            "Bytes per chunk of GET /stream/rover-image, the chunked-generator example.",
            "an integer number of bytes from 1 to 16777216"),
    Setting("DEMO", _boolean, True,
            "Whether the shipped entry points (rover-stream serve, wsgi.py) serve the Cosmic Rover Mission "
            "Control demo. create_app() and RoverStream never mount it.", "true or false (1/0, yes/no, on/off)"),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


class Settings(Mapping[str, Any]):
    """The validated values, by name without prefix (``settings["HEARTBEAT_INTERVAL"]``)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        shown = {k: "(hidden)" if BY_NAME[k].sensitive and v else v for k, v in self._values.items()}
        return f"Settings({shown!r})"

    @property
    def checks_tokens(self) -> bool:
        """True when access tokens are checked: a secret, a public key or a JWKS file is set."""
        return bool(self._values["SECRET_KEY"] or self._values["JWT_PUBLIC_KEY"] or self._values["JWKS_FILE"])

    @property
    def max_streams(self) -> int:
        """MAX_STREAMS, resolved: 'auto' leaves 10% of the worker's connections for short requests."""
        explicit = self._values["MAX_STREAMS"]
        if explicit is not None:
            return int(explicit)
        connections: int = self._values["WORKER_CONNECTIONS"]
        return max(1, connections * 9 // 10)

    @property
    def max_body_readers(self) -> int:
        """How many request bodies one worker reads at once: 5% of its connections."""
        connections: int = self._values["WORKER_CONNECTIONS"]
        return max(1, connections // 20)

    @property
    def data_dir(self) -> Path:
        """DATA_DIR, resolved: the user's data folder when unset."""
        explicit = self._values["DATA_DIR"]
        return Path(explicit).absolute() if explicit is not None else user_data_dir()

    @property
    def uploads_dir(self) -> Path:
        """UPLOADS_DIR, resolved: ``uploads`` in the data folder when unset."""
        explicit = self._values["UPLOADS_DIR"]
        return Path(explicit).absolute() if explicit is not None else self.data_dir / "uploads"


def _parse_one(setting: Setting, raw: Any, source: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, TypeError, OverflowError):
        shown = "(hidden)" if setting.sensitive else repr(raw)
        raise ConfigError(
            f"Setting {setting.key} has the invalid value {shown} (from {source}); allowed: {setting.allowed}."
        ) from None


def load(config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting.

    ``config`` may name settings with or without the ``ROVER_`` prefix; it wins over the environment.
    Unknown ``ROVER_`` keys in ``config`` are refused (a typo must not silently fall back to a default);
    unknown ``ROVER_`` environment variables are ignored, as other tools may share the prefix.
    """
    environ = os.environ if environ is None else environ
    explicit: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if name in BY_NAME:
            explicit[name] = value
        elif key.startswith(PREFIX):
            close = [s.key for s in SETTINGS if s.name.split("_")[0] == name.split("_")[0]]
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown setting {key!r}.{hint} See docs/settings.md for the list.")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in explicit:
            values[setting.name] = _parse_one(setting, explicit[setting.name], "config")
        elif setting.key in environ:
            values[setting.name] = _parse_one(setting, environ[setting.key], "environment")
        elif setting.convention is not None and (conventional := setting.convention(environ)) is not None:
            try:
                values[setting.name] = _parse_one(setting, conventional, f"environment: {setting.convention_names}")
            except ConfigError as exc:
                # Those variables belong to the platform and to other tools (LOG_LEVEL=warn, say): a value
                # that is not ours to read is no reason to refuse to start.
                log.warning("%s Using the default, %r.", exc, setting.default)
                values[setting.name] = setting.default
        else:
            values[setting.name] = setting.default
    return Settings(values)


def _shown_default(default: Any) -> str:
    if default is None:
        return "(empty)"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return ",".join(default) or "(empty)"
    return str(default)


def markdown_table() -> str:
    """The settings reference as a Markdown document (``docs/settings.md``)."""
    lines = [
        "# Settings",
        "",
        "Generated from `rover_stream/settings.py` by `python -m rover_stream.settings > docs/settings.md`;",
        "a test fails when this file and the declarations differ.",
        "",
        "Set each one in the environment, or in the `config` mapping given to `create_app()`",
        "(which wins). Invalid values stop the start-up with a message naming the setting.",
        "",
        "| Setting | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        shown = s.shown_default or _shown_default(s.default)
        lines.append(f"| `{s.key}` | `{shown}` | {s.allowed} | {s.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
