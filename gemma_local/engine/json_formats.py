"""Checks for the string formats the grammar can generate, for :func:`json_schema.validate_instance`.

``jsonschema`` checks ``date-time``, ``time``, ``hostname`` and ``uri`` only when optional
packages are installed, and ``email`` only for an ``@``; these checks are strict and
dependency-free, so a test that validates output really tests the format.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_EMAIL = re.compile(rf"[A-Za-z0-9_+%-]+(?:\.[A-Za-z0-9_+%-]+)*@(?:{_LABEL}\.)+[A-Za-z]{{2,}}")


def is_date(value: object) -> bool:
    """RFC 3339 full-date (YYYY-MM-DD) naming a real day."""
    if not isinstance(value, str):
        return True
    if not _DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def is_time(value: object) -> bool:
    """RFC 3339 full-time: HH:MM:SS, optional fraction, then Z or an offset."""
    if not isinstance(value, str):
        return True
    m = _TIME.fullmatch(value)
    if not m:
        return False
    hour, minute, second = int(m[1]), int(m[2]), int(m[3])
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset = m[5]
    if offset not in ("Z", "z"):
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            return False
    return True


def is_date_time(value: object) -> bool:
    """RFC 3339 date-time: full-date, ``T``, full-time."""
    if not isinstance(value, str):
        return True
    date, sep, time = value.partition("T") if "T" in value else value.partition("t")
    return bool(sep) and is_date(date) and is_time(time)


def is_uuid(value: object) -> bool:
    """8-4-4-4-12 hex digits."""
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36 and all(value[i] == "-" for i in (8, 13, 18, 23))


def is_email(value: object) -> bool:
    """A plain ``local@domain.tld`` address (no quoted local parts, no IP literals)."""
    return not isinstance(value, str) or bool(_EMAIL.fullmatch(value))


def is_hostname(value: object) -> bool:
    """RFC 1123 hostname: dot-separated labels of letters, digits and inner hyphens."""
    if not isinstance(value, str):
        return True
    return len(value) <= 253 and bool(_HOSTNAME.fullmatch(value))


def is_ipv4(value: object) -> bool:
    """Dotted-quad IPv4 address."""
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def is_uri(value: object) -> bool:
    """An absolute http(s) URI with a host name."""
    if not isinstance(value, str):
        return True
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc) and is_hostname(parts.hostname or "") and " " not in value


FORMATS: dict[str, Callable[[object], bool]] = {
    "date": is_date,
    "time": is_time,
    "date-time": is_date_time,
    "uuid": is_uuid,
    "email": is_email,
    "hostname": is_hostname,
    "ipv4": is_ipv4,
    "uri": is_uri,
}
