"""Plain-text helpers shared by the providers: HTML to text, query keywords, passages.

Everything here is pure and works on ``str``. Queries are natural-language questions ("what
did I write about the Lisbon trip?"), so :func:`keywords` drops common function words before
the words reach a full-text engine; the local index ranks the rest with BM25, the ZIM
provider (whose Xapian parser ANDs terms) relaxes them one by one.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Scripts written without spaces between words: indexed and queried character by character.
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{_CJK}]")
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(r"\w+", re.UNICODE)

# Common English function words: they match nearly every document and only slow BM25 down.
STOPWORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
        "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
        "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself",
        "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
        "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on",
        "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same",
        "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them",
        "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too",
        "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
        "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself",
        "yourselves", "tell", "please", "explain", "describe", "give", "show", "find", "know",
        "let", "lets", "say", "said", "also", "get", "got",
    }
)

_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
        "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
        "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
    }
)
_SKIP_TAGS = frozenset(
    {
        "script", "style", "noscript", "template", "svg", "math", "head", "iframe", "object",
        "canvas",
    }
)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.h1_parts: list[str] = []
        self._skip_depth = 0
        self._in_title = False
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag == "h1":
            self._in_h1 = True
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "h1":
            self._in_h1 = False
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skip_depth:
            return
        if self._in_h1:
            self.h1_parts.append(data)
        self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Strip markup from an HTML page.

    Args:
        html: The page source.

    Returns:
        ``(title, text)``: the ``<title>`` (or first ``<h1>``, or ``""``) and the visible text
        with one paragraph per line; scripts, styles and the ``<head>`` are dropped.
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    title = collapse_spaces("".join(parser.title_parts)) or collapse_spaces("".join(parser.h1_parts))
    return title, normalize_text("".join(parser.parts))


def collapse_spaces(text: str) -> str:
    """All runs of whitespace to one space, trimmed."""
    return " ".join(text.split())


def normalize_text(text: str) -> str:
    """Trim every line, collapse spaces inside lines and keep at most one blank line in a row."""
    lines = [collapse_spaces(line) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def keywords(query: str, *, limit: int = 12) -> list[str]:
    """The words of ``query`` worth searching for, lower-cased, in order, without duplicates.

    Stopwords are dropped unless nothing else is left. Runs of CJK characters stay whole
    (callers split them as their engine needs).
    """
    words = [w.lower() for w in _WORD.findall(query)]
    kept = [w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit() or CJK_CHAR.match(w))]
    chosen = kept or words
    seen: dict[str, None] = {}
    for w in chosen:
        seen.setdefault(w, None)
    return list(seen)[:limit]


def split_cjk(text: str) -> str:
    """Put spaces around every CJK character, so a word tokenizer indexes each one."""
    return _CJK_RUN.sub(lambda m: " " + " ".join(m.group(0)) + " ", text)


def chunk_text(text: str, *, target_chars: int = 1000, max_chars: int = 1500) -> list[str]:
    """Split text into passages of about ``target_chars`` at paragraph, then sentence, bounds.

    Returns:
        Non-empty passages, in order; their concatenation keeps all the words of ``text``.
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for para in paragraphs:
        pieces.extend(_split_long(para, max_chars) if len(para) > max_chars else [para])
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > target_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    sentences = re.split(r"(?<=[.!?。！？])\s+", paragraph)
    out: list[str] = []
    current = ""
    for sentence in sentences:
        while len(sentence) > max_chars:  # no sentence break: cut at a space (or hard)
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            if current:
                out.append(current)
                current = ""
            out.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > max_chars:
            out.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        out.append(current)
    return [p for p in out if p]


def best_passage(text: str, terms: list[str], *, target_chars: int = 1000) -> str:
    """The passage of ``text`` that contains the most distinct ``terms`` (earliest on ties)."""
    chunks = chunk_text(text, target_chars=target_chars, max_chars=target_chars + target_chars // 2)
    if not chunks:
        return ""
    lowered = [t.lower() for t in terms]

    def score(chunk: str) -> tuple[int, int]:
        low = chunk.lower()
        return sum(1 for t in lowered if t in low), sum(low.count(t) for t in lowered)

    best = max(range(len(chunks)), key=lambda i: (*score(chunks[i]), -i))
    return chunks[best]
