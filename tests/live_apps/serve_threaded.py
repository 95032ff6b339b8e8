"""Serve a WSGI app with Werkzeug's threaded development server (real threads, no gevent).

``python serve_threaded.py module:attr`` binds 127.0.0.1 on a free port and logs the port the way gunicorn
does, so the tests' LiveServer reads it the same way. SIGTERM stops it.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

from werkzeug.serving import make_server


def main() -> None:
    module_name, _, attribute = sys.argv[1].partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True  # type: ignore[attr-defined]  # ThreadedWSGIServer's, from the mixin
    print(f"Listening at: http://127.0.0.1:{server.server_port} (threaded)", flush=True)
    print("Booting worker with pid: (threads)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
