"""The text of a reply streamed while its tokens come: one piece per token, stop strings held back.

A token's piece is what it adds to the decoded text. A token that ends inside a multi-byte
character adds nothing until the character is complete. With ``stop`` strings, the tail of the
text that could still begin one is held back until the next tokens decide; at the first stop
string the text ends (OpenAI's ``stop``: the sequence itself is never sent). ``finish`` sends
what is left of the final content, so the pieces join to exactly the reply's ``content``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)
REPLACEMENT_CHAR = "\ufffd"


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    keep = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:k]):
                keep = k
                break
    return keep


class TextStream:
    """Pieces of the text of ``decode(tokens so far)`` (module doc)."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = tuple(stops)
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False

    def feed(self, tokens: Sequence[int]) -> list[str]:
        pieces = []
        for token in tokens:
            self.tokens.append(int(token))
            if self.stopped:
                continue
            text = self.decode(self.tokens)
            if text.endswith(REPLACEMENT_CHAR) or not text.startswith(self.sent):
                continue  # a partial character, or a decoding that rewrote the past: wait
            cuts = [text.find(s) for s in self.stops if s in text]
            if cuts:
                text, self.stopped = text[:min(cuts)], True
            else:
                text = text[:len(text) - held_back(text, self.stops)]
            if len(text) > len(self.sent):
                pieces.append(text[len(self.sent):])
                self.sent = text
        return pieces

    def finish(self, content: str) -> list[str]:
        """The rest of ``content`` (the reply as the non-streamed answer has it)."""
        if not content.startswith(self.sent):  # cannot happen with prefix-stable decoding
            logger.warning("streamed text %r is not a prefix of the reply %r", self.sent, content)
            return []
        rest, self.sent = content[len(self.sent):], content
        return [rest] if rest else []
