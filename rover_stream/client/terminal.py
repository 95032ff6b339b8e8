"""Terminal helpers of the ``rover-stream`` command: a prompt that keeps what the user is typing while
other lines are printed above it (``chat``), a progress bar (``download``), and text made safe to print.

The prompt needs no curses nor readline: on a terminal it switches off echo and line editing (termios),
echoes the keys itself and, for a line printed from another thread, clears the prompt line
(``\\r\\x1b[K``), prints the line and draws the prompt and the input again. Without a terminal (stdin a
pipe or a file) it reads plain lines and prints plain lines.
"""

from __future__ import annotations

import codecs
import io
import os
import select
import sys
import threading
import time
import unicodedata
from types import TracebackType
from typing import Any, TextIO

#: Seconds between two looks at the stop flag while waiting for a key.
POLL_INTERVAL = 0.1
#: Seconds between two redraws of the progress bar.
PROGRESS_INTERVAL = 0.1
CLEAR_LINE = "\r\x1b[K"


def printable(text: str) -> str:
    """``text`` with its control characters shown as escapes (``\\x1b``): a message read from the network
    cannot move the cursor, clear the screen or retitle the terminal. A tab becomes a space."""
    if text.isprintable():
        return text
    return "".join(
        " " if c == "\t" else f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)


class Prompt:
    """Read lines from the user while other threads print lines (see the module's documentation).

    Use it as a context manager (it sets the terminal up and restores it), :meth:`show` to print a line
    from any thread and :meth:`read_line` in the main thread. Ctrl-C raises ``KeyboardInterrupt``, Ctrl-D
    on an empty line ends the input. Editing: Left/Right, Home/End (and Ctrl-A/Ctrl-E) move the cursor;
    Backspace and Delete erase a character, Ctrl-U everything before the cursor, Ctrl-W the word before
    it; other escape sequences are ignored. An input longer than the terminal is wide scrolls sideways on
    its one line, so that the cursor stays in view and lines printed above it never meet a wrapped input.
    """

    def __init__(self, prompt: str, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        self.prompt = prompt
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.fd = self.stdin.fileno()
        self.interactive = self.stdin.isatty()
        self.buffer = ""
        self.cursor = 0  # where in the buffer the next key goes
        self._offset = 0  # the first character of the buffer shown (a long input scrolls sideways)
        self._pending = ""
        self._escape = ""  # an escape sequence being read: "\x1b", then "\x1b[" or "\x1bO" and its bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()
        self._saved: Any = None

    def __enter__(self) -> Prompt:
        if self.interactive:
            import termios

            self._saved = termios.tcgetattr(self.fd)
            mode = termios.tcgetattr(self.fd)
            # Keys come one by one, unechoed, Ctrl-C as a character: we echo and edit ourselves.
            mode[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
            mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self.fd, termios.TCSADRAIN, mode)
            self._write(self.prompt)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._saved is not None:
            import termios

            with self._lock:
                self._write(CLEAR_LINE)
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
                self._saved = None

    def show(self, line: str) -> None:
        """Print ``line`` above the prompt, keeping the input as it is (from any thread)."""
        with self._lock:
            if self.interactive:
                self._write(f"{CLEAR_LINE}{line}\n{self._input_line(clear=False)}")  # a new line: nothing to clear
            else:
                self._write(line + "\n")

    def read_line(self, stop: threading.Event | None = None) -> str | None:
        """The next line the user enters (without its newline), or None at the end of the input (Ctrl-D,
        end of file) or once ``stop`` is set."""
        while True:
            while self._pending:
                char, self._pending = self._pending[0], self._pending[1:]
                try:
                    line = self._key(char) if self.interactive else self._plain(char)
                except EOFError:
                    return None
                if line is not None:
                    return line
            if stop is not None and stop.is_set():
                return None
            ready, _, _ = select.select([self.fd], [], [], POLL_INTERVAL)
            if not ready:
                continue
            data = os.read(self.fd, 1024)
            if not data:
                if not self.interactive and self.buffer:
                    line, self.buffer = self.buffer, ""
                    return line
                return None
            self._pending += self._decoder.decode(data)

    def _plain(self, char: str) -> str | None:
        if char == "\n":
            line, self.buffer = self.buffer.rstrip("\r"), ""
            return line
        self.buffer += char
        return None

    def _key(self, char: str) -> str | None:
        if self._escape:
            self._escape += char
            if len(self._escape) == 2 and char not in "[O":
                self._escape = ""  # ESC and a key (Alt-key): ignored
            elif len(self._escape) > 2 and "@" <= char <= "~":
                sequence, self._escape = self._escape[2:], ""
                self._move(sequence)
            return None
        if char in "\r\n":
            line, self.buffer, self.cursor, self._offset = self.buffer, "", 0, 0
            with self._lock:
                self._write(CLEAR_LINE + self.prompt)
            return line
        if char == "\x03":
            raise KeyboardInterrupt
        if char == "\x04" and not self.buffer:
            raise EOFError  # Ctrl-D on an empty line: the end of the input, as in a shell
        before, after = self.buffer[:self.cursor], self.buffer[self.cursor:]
        if char == "\x1b":
            self._escape = char
        elif char in "\x7f\x08":
            self._edit(before[:-1], after)
        elif char == "\x15":
            self._edit("", after)
        elif char == "\x17":
            kept = before.rstrip()
            self._edit(kept.rpartition(" ")[0] + (" " if " " in kept else ""), after)
        elif char == "\x01":
            self._edit("", before + after)
        elif char == "\x05":
            self._edit(before + after, "")
        elif char >= " ":
            self._edit(before + char, after)
        return None

    def _move(self, sequence: str) -> None:
        """A CSI or SS3 sequence: the arrows, Home, End and Delete act; the rest is ignored."""
        before, after = self.buffer[:self.cursor], self.buffer[self.cursor:]
        if sequence == "D" and before:
            self._edit(before[:-1], before[-1] + after)
        elif sequence == "C" and after:
            self._edit(before + after[0], after[1:])
        elif sequence in ("H", "1~", "7~"):
            self._edit("", before + after)
        elif sequence in ("F", "4~", "8~"):
            self._edit(before + after, "")
        elif sequence == "3~" and after:
            self._edit(before, after[1:])

    def _edit(self, before: str, after: str) -> None:
        self.buffer, self.cursor = before + after, len(before)
        with self._lock:
            self._write(self._input_line())

    def _input_line(self, clear: bool = True) -> str:
        """The prompt line as drawn: the prompt and the part of the input around the cursor that fits."""
        try:
            columns = os.get_terminal_size(self.stdout.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            columns = 80
        room = max(10, columns - len(self.prompt) - 1)
        if self.cursor < self._offset:
            self._offset = self.cursor
        elif self.cursor > self._offset + room:
            self._offset = self.cursor - room
        self._offset = max(0, min(self._offset, max(0, len(self.buffer) - room)))
        shown = self.buffer[self._offset:self._offset + room]
        back = len(shown) - (self.cursor - self._offset)
        return f"{CLEAR_LINE if clear else ''}{self.prompt}{shown}" + (f"\x1b[{back}D" if back > 0 else "")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


class ProgressBar:
    """``[#########.........]  45.2%  14.5 MiB / 32.0 MiB  8.1 MiB/s  ETA 2 s`` on one line of ``stream``;
    call it with the bytes done and the total (None when unknown), then :meth:`finish`."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None, label: str = "") -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self._started: float | None = None
        self._first = 0
        self._drawn = 0.0
        self._last: tuple[int, int | None] = (0, None)

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started, self._first = now, done
        self._last = (done, total)
        if now - self._drawn >= PROGRESS_INTERVAL:
            self._drawn = now
            self._draw(done, total, now)

    def finish(self) -> None:
        if self._started is not None:
            self._draw(*self._last, time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, done: int, total: int | None, now: float) -> None:
        elapsed = max(now - (self._started or now), 1e-6)
        speed = (done - self._first) / elapsed
        parts = [self.label] if self.label else []
        if total:
            filled = min(self.WIDTH, done * self.WIDTH // total)
            parts.append(f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * done / total:5.1f}%")
            parts.append(f"{human_bytes(done)} / {human_bytes(total)}")
        else:
            parts.append(human_bytes(done))
        parts.append(f"{human_bytes(speed)}/s")
        if total and speed > 0 and done < total:
            parts.append(f"ETA {max(1, round((total - done) / speed))} s")
        self.stream.write(CLEAR_LINE + "  ".join(parts))
        self.stream.flush()


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("not reached")
