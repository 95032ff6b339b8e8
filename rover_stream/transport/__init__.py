"""Transports: how a response's bytes reach its socket. Nothing here knows about channels or rooms.

- :mod:`.pipe` -- the bounded, lock-free hand-off between a producer (greenlet or thread) and a body;
- :mod:`.streaming` -- :class:`StreamBody`, the WSGI body every stream uses (admission, byte counting,
  abort on error), :class:`StreamingResponse`, writers, CSV and NDJSON responses;
- :mod:`.event_stream` -- ``sse_response``: Server-Sent Events from a generator or a hub subscription,
  heartbeats, the shutdown event;
- :mod:`.files` -- ``send_file`` / ``send_from_directory``: conditional requests, Range, ``os.sendfile``,
  kept inside their folder;
- :mod:`.parked` -- parked streams: connections served by one writer greenlet per worker instead of one
  greenlet each (SSE subscriptions, room members);
- :mod:`.sockets` -- what a response knows of its socket: peer closed, writable, bytes acknowledged;
- :mod:`.websocket` -- the one adapter that reaches inside simple-websocket, so that a WebSocket
  connection is read by the parking lot and written by its one writer.

The wire formats they write are pure and live in :mod:`rover_stream.wire`.
"""
