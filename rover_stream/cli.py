"""The ``rover-stream`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import settings as settings_module
from .errors import ConfigError

#: The source checkout: gunicorn.conf.py and wsgi.py live at its top (install with `pip install -e .`).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    overrides = {"BIND": args.bind, "WORKERS": args.workers, "REDIS_URL": getattr(args, "redis_url", None)}
    for name, value in overrides.items():
        if value is not None and name in settings_module.BY_NAME:
            os.environ[settings_module.PREFIX + name] = str(value)
    try:
        settings_module.load()
    except ConfigError as exc:
        print(f"rover-stream: {exc}", file=sys.stderr)
        return 2
    config = Path(args.config) if args.config else PROJECT_ROOT / "gunicorn.conf.py"
    if not config.is_file():
        print(f"rover-stream: no gunicorn config at {config}; run from a source checkout installed with "
              "'pip install -e .', or pass --config.", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), "--chdir", str(PROJECT_ROOT), *extra, args.app]
    os.execv(sys.executable, argv)
    return 1  # not reached


def _token(args: argparse.Namespace, extra: list[str]) -> int:
    from .auth import mint_token

    secret = args.secret or os.environ.get(settings_module.PREFIX + "SECRET_KEY")
    if not secret or len(secret) < 32:
        print("rover-stream: a secret of at least 32 characters is needed: --secret or ROVER_SECRET_KEY.",
              file=sys.stderr)
        return 2
    if not args.publish and not args.subscribe and not args.admin:
        print("rover-stream: name at least one channel pattern with --publish or --subscribe (or --admin).",
              file=sys.stderr)
        return 2
    print(mint_token(secret, publish=args.publish, subscribe=args.subscribe, expires_in=args.expires,
                     subject=args.subject, admin=args.admin))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rover-stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the server under gunicorn with gevent workers",
        description="Run gunicorn with gunicorn.conf.py (settings from ROVER_* variables; see "
                    "docs/settings.md). Arguments after '--' go to gunicorn unchanged.")
    serve.add_argument("--bind", "-b", help="address to listen on (ROVER_BIND, default 127.0.0.1:8000)")
    serve.add_argument("--workers", "-w", type=int, help="worker processes (ROVER_WORKERS, default 1)")
    serve.add_argument("--config", "-c", help="gunicorn config file (default: the checkout's gunicorn.conf.py)")
    serve.add_argument("--app", default="wsgi:app", help="WSGI app to serve (default wsgi:app)")
    serve.set_defaults(handler=_serve)

    token = commands.add_parser(
        "token", help="mint an access token (JWT) for channels",
        description="Print a token signed with ROVER_SECRET_KEY that allows publishing and/or subscribing on "
                    "the channels matching the patterns (fnmatch: 'news', 'private-team-*', '*').")
    token.add_argument("--publish", "-p", action="append", default=[], metavar="PATTERN",
                       help="channels the holder may publish on (repeatable)")
    token.add_argument("--subscribe", "-s", action="append", default=[], metavar="PATTERN",
                       help="channels the holder may subscribe to (repeatable)")
    token.add_argument("--expires", type=int, default=3600, metavar="SECONDS",
                       help="lifetime in seconds (default 3600)")
    token.add_argument("--subject", help="who the token is for (the 'sub' claim)")
    token.add_argument("--admin", action="store_true", help="also allow the /admin endpoints (stream stats)")
    token.add_argument("--secret", help="signing secret (default: ROVER_SECRET_KEY)")
    token.set_defaults(handler=_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    return int(args.handler(args, extra))


if __name__ == "__main__":
    sys.exit(main())
