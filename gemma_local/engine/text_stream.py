"""Turn sampled tokens into safe text deltas: whole UTF-8 characters, never a stop sequence.

Two things make a naive ``decode(piece)`` wrong: a multi-byte character can be split across
tokens, and a stop sequence can be split across tokens (so its first half must be held back
until we know whether the rest follows).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class StopHit:
    text_before: str
    stop: str


class StopMatcher:
    """Holds back any tail of the output that could be the start of a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""

    def feed(self, text: str) -> tuple[str, StopHit | None]:
        """Add new text; return (text safe to emit now, stop hit if a stop sequence completed)."""
        if not self.stops:
            return text, None
        buf = self._held + text
        first: tuple[int, str] | None = None
        for stop in self.stops:
            i = buf.find(stop)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, stop)
        if first is not None:
            self._held = ""
            return "", StopHit(buf[: first[0]], first[1])
        keep = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def _partial_suffix_len(self, buf: str) -> int:
        # Longest suffix of buf that is a proper prefix of some stop sequence.
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        """At the end of generation, held-back text turned out not to be a stop: release it."""
        held, self._held = self._held, ""
        return held


class TextAssembler:
    """Bytes of tokens in → text out, split only on character boundaries."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop_matcher = StopMatcher(stops)

    def push(self, piece: bytes) -> tuple[str, StopHit | None]:
        text = self._decoder.decode(piece)
        out, hit = self.stop_matcher.feed(text)
        if hit is not None:
            return hit.text_before, hit
        return out, None

    def finish(self) -> str:
        """Flush what is held back at the end (an incomplete character becomes U+FFFD)."""
        tail = self._decoder.decode(b"", final=True)
        out, hit = self.stop_matcher.feed(tail)
        if hit is not None:
            return hit.text_before
        return out + self.stop_matcher.flush()
