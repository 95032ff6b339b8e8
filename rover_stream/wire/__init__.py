"""Wire formats: pure functions from Python values to the bytes on the wire.

Nothing in this package does I/O, sleeps or touches Flask, gevent or sockets; everything here is a
plain function or class that can be unit-tested in isolation. The transports in the parent package
(``sse``, ``streaming``, ``files``) call it.
"""

from .sse import Event, encode, encode_comment
from .tabular import csv_chunks, ndjson_chunks

__all__ = ["Event", "encode", "encode_comment", "csv_chunks", "ndjson_chunks"]
