"""Files under the document root: mapping request targets to files safely,
caching each file's response headers, and the arithmetic of conditional
requests (304) and single byte ranges (206, 416).

A target is percent-decoded once, split into segments, and refused if any
segment is ``..`` (also when it was spelled ``%2e%2e``), contains NUL, or
if the real path (symlinks resolved) leaves the root. ``FileCache`` keeps,
per raw target, the file's identity (inode, size, mtime) and precomputed
header bytes, revalidated with one ``stat`` at most every
``validity`` seconds; small bodies can be kept too.

This module never sends anything and never opens anything but regular
files inside the root.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections import OrderedDict
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from .http import HttpError

_TYPES = mimetypes.MimeTypes()
_TEXT_TYPES = ("text/", "application/javascript", "application/json", "application/xml", "image/svg+xml")
_EXTRA_TYPES = {".md": "text/markdown", ".mjs": "text/javascript", ".wasm": "application/wasm", ".webp": "image/webp"}


def content_type(path: str) -> bytes:
    """Content-Type for ``path`` by its extension (UTF-8 for text)."""
    ext = os.path.splitext(path)[1].lower()
    kind = _EXTRA_TYPES.get(ext) or _TYPES.types_map[1].get(ext) or "application/octet-stream"
    if kind.startswith(_TEXT_TYPES):
        kind += "; charset=utf-8"
    return kind.encode()


class FileEntry:
    """One servable file: its identity and the header bytes of its 200."""

    __slots__ = (
        "path", "ino", "size", "mtime_ns", "etag", "last_modified", "headers", "body", "checked_at", "type",
    )

    def __init__(self, path: str, st: os.stat_result, checked_at: float) -> None:
        self.path = path
        self.ino = st.st_ino
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.etag = b'"%x-%x"' % (st.st_mtime_ns // 1000, st.st_size)
        self.last_modified = formatdate(st.st_mtime, usegmt=True).encode()
        self.type = content_type(path)
        # Everything after Date for a full 200, minus Connection and the
        # blank line: one concatenation per request.
        self.headers = b"Content-Type: %s\r\nContent-Length: %d\r\nLast-Modified: %s\r\nETag: %s\r\nAccept-Ranges: bytes\r\n" % (
            self.type, self.size, self.last_modified, self.etag)
        self.body: bytes | None = None
        self.checked_at = checked_at

    def same_file(self, st: os.stat_result) -> bool:
        return st.st_ino == self.ino and st.st_size == self.size and st.st_mtime_ns == self.mtime_ns

    def part_headers(self, start: int, end: int) -> bytes:
        """Headers of a 206 for bytes start..end (inclusive)."""
        return b"Content-Type: %s\r\nContent-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\nLast-Modified: %s\r\nETag: %s\r\nAccept-Ranges: bytes\r\n" % (
            self.type, end - start + 1, start, end, self.size, self.last_modified, self.etag)

    def not_modified_headers(self) -> bytes:
        return b"Last-Modified: %s\r\nETag: %s\r\n" % (self.last_modified, self.etag)


class Redirect(Exception):
    """A directory asked for without its trailing slash."""

    def __init__(self, location: bytes) -> None:
        super().__init__(location)
        self.location = location


class FileCache:
    """Target -> FileEntry, bounded, with a cheap revalidation.

    ``lookup`` raises HttpError (403, 404, 400) or Redirect; it calls
    ``stat`` at most once per ``validity`` seconds for a cached target.
    """

    def __init__(self, root: str, validity: float = 1.0, max_entries: int = 4096, max_body: int = 65536) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise NotADirectoryError(f"document root {root!r} is not a directory")
        self.root = real
        self._root_prefix = real.rstrip("/") + "/"
        self.validity = validity
        self.max_entries = max_entries
        self.max_body = max_body
        self._entries: OrderedDict[bytes, FileEntry] = OrderedDict()

    def lookup(self, target: bytes, now: float) -> FileEntry:
        entry = self._entries.get(target)
        if entry is not None:
            if 0.0 <= now - entry.checked_at < self.validity:
                return entry
            try:
                st = os.stat(entry.path)
            except OSError:
                st = None
            if st is not None and entry.same_file(st):
                # Cheap path: the file is the one we described. A symlink
                # swapped under the root is caught by the full resolve the
                # next time the file changes, or by invalidate().
                entry.checked_at = now
                return entry
            del self._entries[target]
        entry = self._resolve(target, now)
        entries = self._entries
        entries[target] = entry
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
        return entry

    def invalidate(self, target: bytes) -> None:
        self._entries.pop(target, None)

    def replace(self, target: bytes, entry: FileEntry, st: os.stat_result, now: float) -> FileEntry:
        """The file changed under ``entry`` (seen by fstat of an open fd):
        a fresh entry for the same path."""
        fresh = FileEntry(entry.path, st, now)
        if self._entries.get(target) is entry:
            self._entries[target] = fresh
        return fresh

    def _resolve(self, target: bytes, now: float) -> FileEntry:
        path, directory_form = self.local_path(target)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise HttpError(404, "no such file", close=False) from None
        except NotADirectoryError:
            raise HttpError(404, "no such file", close=False) from None
        except PermissionError:
            raise HttpError(403, "permission denied", close=False) from None
        except OSError as exc:
            raise HttpError(404, f"cannot open: {exc.strerror}", close=False) from None
        if stat.S_ISDIR(st.st_mode):
            if not directory_form:
                raise Redirect(target.split(b"?", 1)[0] + b"/")
            path = os.path.join(path, "index.html")
            try:
                st = os.stat(path)
            except OSError:
                raise HttpError(403, "directory has no index.html and listings are off", close=False) from None
            real = os.path.realpath(path)
            if not real.startswith(self._root_prefix):
                raise HttpError(403, "path leaves the document root", close=False)
        if not stat.S_ISREG(st.st_mode):
            raise HttpError(403, "not a regular file", close=False)
        if not os.access(path, os.R_OK):
            raise HttpError(403, "permission denied", close=False)
        return FileEntry(path, st, now)

    def local_path(self, target: bytes) -> tuple[str, bool]:
        """The real path for ``target`` inside the root, and whether the
        target named a directory (ends in '/'). Raises HttpError."""
        if target.startswith(b"/"):
            path = target
        elif target.lower().startswith((b"http://", b"https://")):
            # absolute-form: the path starts at the third slash
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            path = rest[slash:] if slash >= 0 else b"/"
        else:
            raise HttpError(400, "request target must start with '/'", close=False)
        path = path.split(b"?", 1)[0].split(b"#", 1)[0]
        raw = unquote_to_bytes(path)
        if b"\0" in raw:
            raise HttpError(400, "NUL byte in path", close=False)
        segments = raw.split(b"/")
        if b".." in segments:
            raise HttpError(403, "path traversal ('..') refused", close=False)
        try:
            parts = [s.decode("utf-8") for s in segments if s and s != b"."]
        except UnicodeDecodeError:
            raise HttpError(400, "path is not valid UTF-8", close=False) from None
        joined = os.path.join(self.root, *parts)
        real = os.path.realpath(joined)
        if real != self.root and not real.startswith(self._root_prefix):
            raise HttpError(403, "path leaves the document root", close=False)
        return real, raw.endswith(b"/")


# ---------------------------------------------------------------------------
# Conditional requests and ranges


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """Weak comparison against an If-None-Match / If-Range list."""
    if header.strip() == b"*":
        return True
    opaque = etag
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == opaque:
            return True
    return False


def _http_date(value: bytes) -> float | None:
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def not_modified(entry: FileEntry, conditions: dict) -> bool:
    """True if the client's copy is current (answer 304)."""
    inm = conditions.get(b"if-none-match")
    if inm is not None:
        return _etag_matches(inm, entry.etag)
    ims = conditions.get(b"if-modified-since")
    if ims is not None:
        if ims == entry.last_modified:
            return True
        when = _http_date(ims)
        return when is not None and entry.mtime_ns // 1_000_000_000 <= when
    return False


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: bytes, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single-range ``Range`` header, or None
    to send the whole file (multiple ranges, other units or bad syntax are
    ignored, as RFC 9110 allows). Raises RangeNotSatisfiable."""
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition(b"-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if (first_text and not first_text.isdigit()) or (last_text and not last_text.isdigit()):
        return None
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable()
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def range_applies(entry: FileEntry, conditions: dict) -> bool:
    """If-Range: the range holds only if the client's validator is current."""
    if_range = conditions.get(b"if-range")
    if if_range is None:
        return True
    if if_range.startswith((b'"', b"W/")):
        return not if_range.startswith(b"W/") and if_range.strip() == entry.etag
    return if_range.strip() == entry.last_modified
