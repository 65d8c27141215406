"""Turn a user's document into ``(title, text)`` for the local index.

Supported: Markdown and plain text (``.md .markdown .txt .text .rst .org``), HTML (markup
stripped), and PDF through ``pypdf`` (the ``search`` extra); anything else is not a document.
A file that cannot be read raises :class:`ExtractError` with a reason the CLI shows the user.
"""

from __future__ import annotations

import re
from pathlib import Path

from gemma_local.search.text import html_to_text, normalize_text

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".mdown", ".txt", ".text", ".rst", ".org"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
PDF_SUFFIXES = frozenset({".pdf"})
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES

#: Larger files are skipped: a note or a page is far smaller; a book-sized PDF still fits.
MAX_TEXT_BYTES = 20 * 1024 * 1024
MAX_PDF_BYTES = 200 * 1024 * 1024

_MD_HEADING = re.compile(r"^\s{0,3}#{1,2}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_RST_TITLE = re.compile(r"^(\S.*)\n[=\-~#*]{3,}\s*$", re.MULTILINE)


class ExtractError(Exception):
    """This file cannot be indexed; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_document(path: Path) -> bool:
    """Whether the local index reads files with this name."""
    return path.suffix.lower() in SUFFIXES


def extract(path: Path, size: int) -> tuple[str, str]:
    """Read one document.

    Args:
        path: The file.
        size: Its size in bytes (from the caller's ``stat``), checked against the limits.

    Returns:
        ``(title, text)``; the title falls back to the file name.

    Raises:
        ExtractError: Too large, binary, unreadable, an unparsable PDF, or ``pypdf`` missing.
    """
    suffix = path.suffix.lower()
    limit = MAX_PDF_BYTES if suffix in PDF_SUFFIXES else MAX_TEXT_BYTES
    if size > limit:
        raise ExtractError(f"larger than {limit // (1024 * 1024)} MB")
    if suffix in PDF_SUFFIXES:
        title, text = _read_pdf(path)
    else:
        raw = _read_text(path)
        if suffix in HTML_SUFFIXES:
            title, text = html_to_text(raw)
        else:
            text = normalize_text(raw)
            title = _text_title(text, suffix)
    return (title.strip() or path.stem), text


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ExtractError(f"cannot read: {e.strerror or e}") from e
    if b"\x00" in data[:8192]:
        raise ExtractError("binary content")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _text_title(text: str, suffix: str) -> str:
    head = text[:4000]
    match = _MD_HEADING.search(head) if suffix != ".rst" else _RST_TITLE.search(head)
    return match.group(1).strip() if match else ""


def _read_pdf(path: Path) -> tuple[str, str]:
    try:
        from pypdf import PdfReader
    except ImportError as e:
        raise ExtractError("PDF text needs pypdf: pip install 'gemma-local[search]'") from e
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise ExtractError("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except ExtractError:
        raise
    except Exception as e:  # pypdf raises many types for damaged files
        raise ExtractError(f"unreadable PDF ({type(e).__name__}: {e})") from e
    text = normalize_text("\n\n".join(pages))
    if not text:
        raise ExtractError("PDF has no extractable text (scanned images?)")
    return str(meta_title), text
