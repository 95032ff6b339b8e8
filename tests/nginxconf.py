"""Reading deploy/'s nginx configurations in tests: the directives of each server block."""

from __future__ import annotations

import re


def server_blocks(text: str) -> list[list[str]]:
    """The directives of each top-level server block (comments dropped, whitespace normalised)."""
    text = re.sub(r"#[^\n]*", "", text)
    blocks = []
    for match in re.finditer(r"^server\s*\{", text, re.MULTILINE):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        blocks.append([" ".join(d.split()) for d in re.findall(r"[^;{}]+[;{]|\}", text[match.end():end - 1])])
    return blocks
