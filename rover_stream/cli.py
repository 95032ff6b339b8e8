"""The rover-stream command line.

Server side: 'serve' runs the server, 'token' mints access tokens. Client side (--url or ROVER_URL
names the server, --token or ROVER_TOKEN the access token): 'listen' prints a stream's events as they
arrive, 'publish' publishes one, 'chat' joins a WebSocket room, 'download' fetches a file (and resumes
it), 'stats' prints the server's stream statistics. 'rover-stream COMMAND --help' tells more; docs/cli.md
has examples. The client commands use rover_stream.client, the library.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from . import __version__
from . import settings as settings_module
from .auth import mint_token
from .client import (
    DEFAULT_URL,
    Client,
    ClientError,
    ConnectionFailed,
    EventSource,
    RoomClient,
    StreamClosed,
    download,
    stream_url,
)
from .client.eventsource import describe
from .client.terminal import ProgressBar, Prompt, human_bytes, printable
from .client.transport import bearer
from .errors import ConfigError
from .server.checks import split_hub_problem

#: The gunicorn configuration inside the package (``gunicorn -c python:...``): no checkout needed.
SERVER_CONFIG = "python:rover_stream.server.config"
#: What ``serve`` runs: Mission Control while ROVER_DEMO is on and the demo is installed, else the server
#: alone. Named, not imported: gunicorn imports the app in its workers.
DEMO_APP, SERVER_APP = "rover_stream.demo.wsgi:app", "rover_stream.server.wsgi:app"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = """\
exit codes:
  0    success (listen: --max or --timeout reached, or the server ended the stream with 204;
       chat: you left the room)
  1    the server refused or failed (an HTTP error status, a room closed by the server, not an event
       stream), or a local file could not be written
  2    bad usage or invalid settings
  3    the server could not be reached, listen gave up reconnecting, or a download broke off
  130  interrupted (Ctrl-C), except in chat where Ctrl-C is the way to leave (0)"""


# -- serve and token ---------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = {"BIND": args.bind, "WORKERS": args.workers, "REDIS_URL": args.redis_url}
    for name, value in overrides.items():
        if value is not None and name in settings_module.BY_NAME:
            os.environ[settings_module.PREFIX + name] = str(value)
    try:
        settings = settings_module.load()
    except ConfigError as exc:
        print(f"rover-stream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = split_hub_problem(settings["WORKERS"], settings["REDIS_URL"])
    if problem:
        print(f"rover-stream: {problem}", file=sys.stderr)
        return EXIT_USAGE
    config = SERVER_CONFIG
    if args.config:
        if not Path(args.config).is_file():
            print(f"rover-stream: no gunicorn config at {args.config}.", file=sys.stderr)
            return EXIT_USAGE
        config = args.config
    app = args.app or _default_app(settings["DEMO"])
    argv = [sys.executable, "-m", "gunicorn", "-c", config, *extra, app]
    os.execv(sys.executable, argv)
    return EXIT_FAILURE  # not reached


def _default_app(demo: bool) -> str:
    if not demo:
        return SERVER_APP
    if importlib.util.find_spec("rover_stream.demo") is None:
        print("rover-stream: the Mission Control demo is not installed; serving the server alone.",
              file=sys.stderr)
        return SERVER_APP
    return DEMO_APP


def _token(args: argparse.Namespace, extra: list[str]) -> int:
    secret = args.secret or os.environ.get(settings_module.PREFIX + "SECRET_KEY")
    if not secret or len(secret) < 32:
        print("rover-stream: a secret of at least 32 characters is needed: --secret or ROVER_SECRET_KEY.",
              file=sys.stderr)
        return EXIT_USAGE
    subscribe = args.subscribe + args.room
    if not args.publish and not subscribe and not args.admin:
        print("rover-stream: name at least one channel pattern with --publish, --subscribe or --room (or "
              "--admin).", file=sys.stderr)
        return EXIT_USAGE
    print(mint_token(secret, publish=args.publish, subscribe=subscribe, expires_in=args.expires,
                     subject=args.subject, admin=args.admin))
    return EXIT_OK


def duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h`` or ``7d``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use seconds (3600) or 90s, 15m, 2h, 7d")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


# -- listen ------------------------------------------------------------------------------------------------

def _listen(args: argparse.Namespace, extra: list[str]) -> int:
    if any("://" in target for target in args.target):
        if len(args.target) > 1:
            print("rover-stream listen: give one URL, or one or more channel names.", file=sys.stderr)
            return EXIT_USAGE
        url = args.target[0]
    else:
        url = stream_url(args.url, args.target)
    printer = EventPrinter(url, sys.stdout, as_json=args.json)
    notice = _notifier(args.quiet)

    def opened(source: EventSource) -> None:
        if source.reconnects:
            where = f"resuming after id {source.last_event_id}" if source.last_event_id else "no id to resume from"
            notice(f"reconnected after {source.downtime:.1f} s ({where})")
        else:
            notice(f"listening to {source.url}")

    def lost(source: EventSource, error: BaseException | None, delay: float) -> None:
        notice(f"{describe(error)}; reconnecting in {delay:.1f} s")

    source = EventSource(url, last_event_id=args.last_event_id, headers=bearer(args.token),
                         max_retries=None if args.retries < 0 else args.retries, on_open=opened, on_error=lost)
    timer = threading.Timer(args.timeout, source.close) if args.timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    shown = 0
    try:
        for event in source:
            if _is_shutdown_notice(event.event, event.data):
                notice("the server is shutting down")
                continue
            printer.show(event.event, event.id, event.data)
            shown += 1
            if args.max and shown >= args.max:
                break
    except StreamClosed as exc:
        notice(str(exc))
    finally:
        source.close()
        if timer is not None:
            timer.cancel()
    return EXIT_OK


def _is_shutdown_notice(event: str, data: str) -> bool:
    """The event a rover_stream server sends to every stream when it stops (not a channel's own)."""
    return event == "shutdown" and '"reconnect_ms"' in data


class EventPrinter:
    """Prints events as readable lines, or as one JSON object per line (``--json``)."""

    def __init__(self, url: str, out: TextIO, as_json: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        path = urlsplit(url).path.rstrip("/")
        head, _, name = path.rpartition("/")
        #: The channel of a single-channel stream; None when the events name theirs (multi-channel) or
        #: the URL is not /realtime.
        self.channel = unquote(name) if head.endswith("/realtime") else None
        self.multi = path.endswith("/realtime") and bool(parse_qs(urlsplit(url).query))

    def show(self, event: str, event_id: str, data: str) -> None:
        value, channel = _maybe_json(data), self.channel
        if self.multi and isinstance(value, dict) and isinstance(value.get("channel"), str):
            channel = value["channel"]  # an event of one of the channels, or a notice about one
            if set(value) == {"channel", "data"}:
                value = value["data"]
                data = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if self.as_json:
            line = json.dumps({"event": event, "id": event_id or None, "data": value, "channel": channel},
                              ensure_ascii=False)
        else:
            parts = [time.strftime("[%H:%M:%S]")]
            if channel:
                parts.append(printable(channel))
            if event_id:
                parts.append("#" + printable(event_id))
            body = "\n    ".join(printable(part) for part in data.split("\n"))
            line = f"{' '.join(parts)} {printable(event)}: {body}"
        self.out.write(line + "\n")
        self.out.flush()


def _maybe_json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _notifier(quiet: bool) -> Callable[[str], None]:
    def notice(message: str) -> None:
        if not quiet:
            print(f"rover-stream: {message}", file=sys.stderr, flush=True)

    return notice


# -- publish and stats -------------------------------------------------------------------------------------

def _publish(args: argparse.Namespace, extra: list[str]) -> int:
    text = sys.stdin.read() if args.data == "-" else args.data
    data = text if args.string else _maybe_json(text)
    answer = Client(args.url, token=args.token).publish(args.channel, data, event=args.event)
    if args.json:
        print(json.dumps(answer))
    else:
        count = answer.get("subscribers")
        print(f"published on {answer.get('channel')} as #{answer.get('id')} "
              f"({count} subscriber{'' if count == 1 else 's'})")
    return EXIT_OK


def _stats(args: argparse.Namespace, extra: list[str]) -> int:
    stats = Client(args.url, token=args.token).stream_stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for name, value in _flatten(stats):
            print(f"{name}: {value}")
    return EXIT_OK


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` as ``[("a.b", 1)]``."""
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in _flatten(inner, f"{prefix}{key}.")]
    return [(prefix[:-1], value)]


# -- chat --------------------------------------------------------------------------------------------------

def _chat(args: argparse.Namespace, extra: list[str]) -> int:
    # Back by itself after a server restart or a lost connection ("* reconnected"); not after a close
    # that is about this client (too big, too fast, refused).
    room = RoomClient(args.url, args.room, args.user, token=args.token, reconnect=True)
    stop = threading.Event()
    with Prompt(f"{printable(args.user)}> ") as prompt:
        def receive() -> None:
            for frame in room:
                for line in format_frame(frame):
                    prompt.show(line)
            if not stop.is_set():  # the server closed the connection
                stop.set()
                prompt.show(f"* disconnected by the server ({room.close_code}"
                            f"{': ' + room.close_reason if room.close_reason else ''})")

        reader = threading.Thread(target=receive, name="rover-stream-chat", daemon=True)
        reader.start()
        try:
            while (line := prompt.read_line(stop)) is not None:
                if line.strip() == "/quit":
                    break
                if line.strip():
                    room.send(line)
        except KeyboardInterrupt:
            pass  # Ctrl-C: leave the room
        left_by_us = not stop.is_set()
        stop.set()
        room.close()
        reader.join(2)
        if left_by_us:
            prompt.show(f"* you left {args.room}")
    return EXIT_OK if left_by_us else EXIT_FAILURE


def format_frame(frame: dict[str, Any]) -> list[str]:
    """A room frame as lines for people (user text made printable: it comes from other people)."""
    kind = frame.get("type")
    clock = time.strftime("[%H:%M:%S]", time.localtime(frame["timestamp"])) if "timestamp" in frame else ""
    user = printable(str(frame.get("user", "?")))
    if kind == "message":
        return [f"{clock} {user}: {printable(str(frame.get('text', '')))}"]
    if kind == "join":
        return [f"{clock} * {user} joined"]
    if kind == "leave":
        return [f"{clock} * {user} left"]
    if kind == "presence":
        members = ", ".join(printable(str(m)) for m in frame.get("members", []))
        return [f"* in {printable(str(frame.get('room', '')))}: {members}"]
    if kind == "history":
        messages = [m for m in frame.get("messages", []) if isinstance(m, dict)]
        if not messages:
            return []
        return [f"* the last {len(messages)} message{'s' if len(messages) > 1 else ''}:"] + [
            line for message in messages for line in format_frame({**message, "type": "message"})]
    if kind == "error":
        return [f"! {printable(str(frame.get('message', frame.get('error', ''))))}"]
    if kind == "disconnected":
        reason = printable(str(frame.get("reason") or ""))
        return [f"* connection closed ({frame.get('code')}{': ' + reason if reason else ''}); reconnecting"]
    if kind == "reconnected":
        return ["* reconnected"]
    return [printable(json.dumps(frame, ensure_ascii=False))]


# -- download ----------------------------------------------------------------------------------------------

def _download(args: argparse.Namespace, extra: list[str]) -> int:
    url = args.source if "://" in args.source else args.url.rstrip("/") + "/" + args.source.lstrip("/")
    notice = _notifier(args.quiet)
    bar = ProgressBar(sys.stderr) if not args.quiet and (args.progress or sys.stderr.isatty()) else None
    state = {"done": 0}

    def progress(done: int, total: int | None) -> None:
        state["done"] = done
        if bar is not None:
            bar(done, total)

    try:
        try:
            result = download(url, args.output, resume=args.resume, headers=bearer(args.token),
                              progress=progress, limit_rate=args.limit_rate)
        finally:
            if bar is not None:
                bar.finish()
    except KeyboardInterrupt:
        notice(f"interrupted after {human_bytes(state['done'])}; run again with --resume to continue")
        return EXIT_INTERRUPTED
    if result.already_complete:
        notice(f"{result.path} is complete already ({result.size} bytes)")
    elif result.restarted:
        notice("the server sent the whole file (it changed since, or serves no ranges): downloaded it again")
    elif result.resumed_from:
        how = "" if result.validated else " (no validator saved: not checked that it is unchanged)"
        notice(f"resumed at byte {result.resumed_from}{how}")
    notice(f"saved {result.path} ({result.size} bytes)")
    print(result.path)
    return EXIT_OK


def byte_rate(text: str) -> float:
    """Bytes a second from ``500000``, ``500K``, ``2M`` or ``1G`` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?(?:/s)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: use bytes a second (500000) or 500K, 2M, 1G")
    return float(match.group(1)) * 1024.0 ** " kmg".index(match.group(2).lower() or " ")


# -- the parser --------------------------------------------------------------------------------------------

def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("ROVER_URL", DEFAULT_URL),
                        help=f"the server (default: ROVER_URL, else {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("ROVER_TOKEN"),
                        help="access token sent as a bearer token (default: ROVER_TOKEN); needed when the "
                             "server has a secret, see 'rover-stream token'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rover-stream", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, handler: Any,
                examples: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=description,
                                  epilog=(f"examples:\n{examples}\n\n" if examples else "") + EXIT_CODES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    serve = command(
        "serve", "run the server under gunicorn with gevent workers",
        "Run gunicorn with gevent workers and rover_stream's configuration (settings from ROVER_* variables,\n"
        "or HOST/PORT, WEB_CONCURRENCY and LOG_LEVEL; see docs/settings.md), from any folder. It serves\n"
        "Mission Control unless ROVER_DEMO=false, or the app given with --app. Generated files go to\n"
        "ROVER_DATA_DIR. More than one worker needs --redis-url. Arguments after '--' go to gunicorn.",
        _serve,
        "  rover-stream serve --bind 127.0.0.1:8000 --workers 4 --redis-url redis://127.0.0.1:6379/0\n"
        "  PORT=8080 rover-stream serve\n"
        "  rover-stream serve --app myapp:app          # your Flask app with RoverStream(app)")
    serve.add_argument("--bind", "-b", help="address to listen on (ROVER_BIND, default 127.0.0.1:8000)")
    serve.add_argument("--workers", "-w", type=int, help="worker processes (ROVER_WORKERS, default 1)")
    serve.add_argument("--redis-url", metavar="URL",
                       help="Redis for the hub, needed by several workers or hosts (ROVER_REDIS_URL)")
    serve.add_argument("--config", "-c", help="a gunicorn config file of your own (default: the package's, "
                                              f"{SERVER_CONFIG})")
    serve.add_argument("--app", help=f"the WSGI app, module:name, imported from the working folder (default: "
                                     f"{DEMO_APP}; {SERVER_APP} with ROVER_DEMO=false)")

    token = command(
        "token", "mint an access token (JWT) for channels and rooms",
        "Print a token signed with ROVER_SECRET_KEY that allows publishing and/or subscribing on the channels\n"
        "matching the patterns (fnmatch: 'news', 'private-team-*', '*'), and joining the matching rooms.",
        _token,
        "  export ROVER_TOKEN=$(rover-stream token -p 'news' -s 'news' -s 'private-*' --expires 2h)\n"
        "  rover-stream token --admin --expires 15m        # for 'rover-stream stats'")
    token.add_argument("--publish", "-p", action="append", default=[], metavar="PATTERN",
                       help="channels the holder may publish on (repeatable)")
    token.add_argument("--subscribe", "-s", action="append", default=[], metavar="PATTERN",
                       help="channels the holder may subscribe to (repeatable)")
    token.add_argument("--room", "-r", action="append", default=[], metavar="PATTERN",
                       help="rooms the holder may join, private- ones included (repeatable)")
    token.add_argument("--expires", type=duration, default=3600, metavar="DURATION",
                       help="lifetime: seconds, or 90s, 15m, 2h, 7d (default 3600)")
    token.add_argument("--subject", help="who the token is for (the 'sub' claim; a room's default user name)")
    token.add_argument("--admin", action="store_true", help="also allow the /admin endpoints (stream stats)")
    token.add_argument("--secret", help="signing secret (default: ROVER_SECRET_KEY)")

    listen = command(
        "listen", "print the events of channels or of an SSE URL as they arrive",
        "Print each event as it arrives: '[12:00:01] news #1795263245123-3 message: {...}', or with --json\n"
        "one JSON object per line: {\"event\", \"id\", \"data\" (parsed when it is JSON), \"channel\"}.\n"
        "A URL is used as it is; channel names become URL/realtime/CHANNEL (several: one multiplexed\n"
        "stream). Lost connections are reopened after the server's retry delay, resuming with\n"
        "Last-Event-ID; what happens is told on stderr ('reconnected after 1.0 s (resuming after id ...)').",
        _listen,
        "  rover-stream listen news\n"
        "  rover-stream listen news alerts --json | jq .data\n"
        "  rover-stream listen http://127.0.0.1:8000/stream/rover-telemetry --max 5")
    listen.add_argument("target", nargs="+", metavar="URL|CHANNEL", help="an SSE URL, or channel names")
    _add_server_options(listen)
    listen.add_argument("--json", action="store_true", help="one JSON object per event and line")
    listen.add_argument("--max", type=int, default=0, metavar="N", help="stop after N events")
    listen.add_argument("--timeout", type=float, default=0, metavar="SECONDS", help="stop after SECONDS")
    listen.add_argument("--last-event-id", metavar="ID", help="start after this event id (replays what followed)")
    listen.add_argument("--retries", type=int, default=60, metavar="N",
                        help="give up (exit 3) after N failed connection attempts in a row; -1: never "
                             "(default 60)")
    listen.add_argument("--quiet", "-q", action="store_true", help="no connection notices on stderr")

    publish = command(
        "publish", "publish an event on a channel through the HTTP API",
        "POST /api/broadcast. DATA is sent as JSON when it is JSON ('42', '{\"a\": 1}'), else as a string;\n"
        "'-' reads it from stdin. Prints the event's id and how many subscribers it reached.",
        _publish,
        "  rover-stream publish news '{\"title\": \"Landing confirmed\"}' --event headline\n"
        "  echo 'plain text' | rover-stream publish news -")
    publish.add_argument("channel", metavar="CHANNEL")
    publish.add_argument("data", metavar="DATA", help="the event's data (JSON or text; '-': stdin)")
    publish.add_argument("--event", "-e", metavar="NAME", help="the event type (default: message)")
    publish.add_argument("--string", action="store_true", help="send DATA as a string even when it is JSON")
    publish.add_argument("--json", action="store_true", help="print the server's JSON answer")
    _add_server_options(publish)

    chat = command(
        "chat", "chat in a WebSocket room from the terminal",
        "Join ROOM as --user: messages from the room appear above your prompt while you type; joins and\n"
        "leaves are shown. Enter sends the line; Ctrl-C, Ctrl-D on an empty line or /quit leave the room\n"
        "(close code 1000) with exit code 0. Without a terminal, each line of stdin is sent.",
        _chat, "  rover-stream chat science --user ada")
    chat.add_argument("room", metavar="ROOM")
    chat.add_argument("--user", "-u", default=os.environ.get("USER") or "anonymous",
                      help="your name in the room (default: $USER)")
    _add_server_options(chat)

    download = command(
        "download", "download a file, with a progress bar and --resume",
        "Download URL (or a PATH on the server: /large-file, /download/NAME) to -o FILE, or to the name the\n"
        "server gives. The progress bar goes to stderr when it is a terminal (or with --progress).\n"
        "--resume continues a partial file by Range, checked with If-Range against the ETag saved in\n"
        "FILE.part.json; when the file changed on the server the download starts over. The final size is\n"
        "checked against Content-Length. Prints the file's path.",
        _download,
        "  rover-stream download /large-file -o big.bin\n"
        "  rover-stream download /large-file -o big.bin --resume     # after an interruption")
    download.add_argument("source", metavar="URL|PATH")
    download.add_argument("--output", "-o", metavar="FILE",
                          help="where to save; a folder: there, under the server's name (default: here)")
    download.add_argument("--resume", "-C", action="store_true", help="continue a partial file")
    download.add_argument("--progress", action="store_true", help="show the progress bar even without a terminal")
    download.add_argument("--limit-rate", type=byte_rate, metavar="RATE",
                          help="at most RATE bytes a second (500K, 2M...)")
    download.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no notices")
    _add_server_options(download)

    stats = command(
        "stats", "print the server's stream statistics",
        "GET /admin/stream-stats: active streams, bytes streamed, throughput, connection errors (of the\n"
        "worker that answers). Needs an admin token when the server has a secret.", _stats,
        "  ROVER_TOKEN=$(rover-stream token --admin) rover-stream stats")
    stats.add_argument("--json", action="store_true", help="print the JSON answer")
    _add_server_options(stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    return _run(args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    """Run the command; the client's errors become a message and an exit code."""
    try:
        return int(args.handler(args, extra))
    except ConnectionFailed as exc:
        print(f"rover-stream {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ClientError as exc:
        print(f"rover-stream {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `rover-stream listen news | head`: the reader is gone, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a local file that cannot be written, a terminal gone...
        print(f"rover-stream {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
