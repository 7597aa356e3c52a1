"""A document's bytes to structured text: what a knowledge base chunks.

Every kind comes out as the same Markdown-ish plain text, so that chunking
has one input to understand: headings as ``#`` lines, paragraphs separated by
one blank line, list items as ``- `` lines, table rows as ``|``-joined cells.
Each kind is read by a well-kept library (pypdf, python-docx, trafilatura,
the stdlib ``csv``); there are no hand-written format parsers here.

Two errors, for two callers. ``Unsupported`` is a file of a type we do not
read, or one whose bytes are not what its name says: the upload is refused
(415) before it is stored. ``Unreadable`` is a file of a type we read that
fails to parse or breaks a limit: the source is kept, marked ``error``, with
the message as the reason a person reads. Both messages say what is wrong in
words, never a traceback.

The files come from strangers, so every reader is bounded. A PDF's pages are
counted before any is read; text stops being extracted as soon as it passes
``max_chars``; a DOCX (a zip) is refused by the sizes its members declare
before python-docx unpacks anything. Python's ``zipfile`` never returns more
than a member's declared size (and fails the CRC check when the data goes on),
so a member that lies about its size cannot unpack past the check.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

import docx
import lxml.html
import pypdf
import trafilatura
from docx.table import Table
from docx.text.paragraph import Paragraph

KINDS = ("pdf", "docx", "html", "markdown", "text", "csv")

_BY_EXTENSION = {
    ".pdf": "pdf", ".docx": "docx", ".html": "html", ".htm": "html", ".md": "markdown",
    ".markdown": "markdown", ".txt": "text", ".text": "text", ".csv": "csv",
}
_BY_CONTENT_TYPE = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/html": "html", "text/markdown": "markdown", "text/plain": "text", "text/csv": "csv",
}
# What an original of each kind is served back as.
MEDIA_TYPES = {kind: media for media, kind in _BY_CONTENT_TYPE.items()}
_WHAT_WE_READ = "send PDF, DOCX, HTML, Markdown, plain text or CSV"
_TEXT_KINDS = frozenset({"html", "markdown", "text", "csv"})
_SNIFF_BYTES = 8192  # how much of a text file is looked at for NUL bytes and UTF-8
_ZIP_MAGIC = b"PK\x03\x04"
# A zip member unpacking to more than this, at more than this ratio, is a bomb
# whatever the total: real DOCX parts compress 3-20:1.
_BOMB_MIN_BYTES = 10_000_000
_BOMB_RATIO = 200


class Unsupported(Exception):
    """Not a type we read (or not what it claims to be): the upload answers 415 with the message."""


class Unreadable(Exception):
    """A type we read that fails to parse or breaks a limit: the source is ``error`` with the message."""


@dataclass(frozen=True)
class Limits:
    """How much of one document is read (``KnowledgeSettings`` holds the configured values)."""

    max_pages: int = 2000
    max_chars: int = 5_000_000
    max_unpacked_bytes: int = 100_000_000


# --- which kind -------------------------------------------------------------


def kind_of(filename: str, content_type: str | None, data: bytes) -> str:
    """Which of ``KINDS`` a file is: by its extension, else by its content type.

    The answer is then checked against the first bytes, so a name cannot make
    us parse something else: a PDF must start with ``%PDF-``, a DOCX must be a
    zip, and a text kind must have no NUL byte in its first 8 KB (Markdown,
    text and CSV must be UTF-8 there too; HTML may declare another charset).
    Raises ``Unsupported`` naming what was sent.
    """
    extension = PurePosixPath(filename.strip().lower()).suffix
    media_type = (content_type or "").partition(";")[0].strip().lower()
    kind = _BY_EXTENSION.get(extension) or _BY_CONTENT_TYPE.get(media_type)
    if kind is None:
        sent = media_type if media_type and media_type != "application/octet-stream" else (
            f"{extension} " if extension else "extension-less ")
        raise Unsupported(f"{sent.strip()} files are not supported; {_WHAT_WE_READ}")
    if kind == "pdf" and not data.startswith(b"%PDF-"):
        raise Unsupported("not a PDF (it does not start with %PDF-)")
    if kind == "docx" and not data.startswith(_ZIP_MAGIC):
        raise Unsupported("not a DOCX (it is not a zip archive)")
    if kind in _TEXT_KINDS:
        _check_text(data, kind)
    return kind


def _check_text(data: bytes, kind: str) -> None:
    head = data[:_SNIFF_BYTES]
    if b"\x00" in head:
        raise Unsupported(f"binary data is not {kind} (it holds NUL bytes); {_WHAT_WE_READ}")
    if kind == "html":
        return
    try:
        # Incremental, so a character cut at the 8 KB boundary is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise Unsupported(f"not UTF-8 text; save the {kind} file as UTF-8") from None


# --- to text ----------------------------------------------------------------


def to_text(data: bytes, kind: str, limits: Limits = Limits()) -> str:
    """The document as Markdown-ish plain text (see the module docstring).

    Raises ``Unreadable`` with a reason a person understands when the file
    does not parse, breaks one of ``limits`` or holds no text at all.
    """
    if kind == "pdf":
        text = _pdf(data, limits)
    elif kind == "docx":
        text = _docx(data, limits)
    elif kind == "html":
        text = _at_most(html_main_text(data), limits)
    elif kind == "csv":
        text = _csv(_decoded(data), limits)
    elif kind in ("markdown", "text"):
        text = _at_most(_decoded(data), limits)
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    text = _tidy(text)
    if not text:
        raise Unreadable("no text found in the document")
    return text


def _decoded(data: bytes) -> str:
    # UTF-8 with the BOM dropped; a stray bad byte past what kind_of looked at
    # becomes U+FFFD rather than losing the whole file.
    return data.decode("utf-8-sig", errors="replace")


class _Text:
    """Blocks of text gathered as a document is read, refused as soon as they pass ``max_chars``."""

    def __init__(self, limits: Limits) -> None:
        self._max_chars = limits.max_chars
        self._chars = 0
        self._parts: list[str] = []

    def add(self, block: str, separator: str = "\n\n") -> None:
        if not block.strip():
            return
        if self._parts:
            self._parts.append(separator)
            self._chars += len(separator)
        self._parts.append(block)
        self._chars += len(block)
        if self._chars > self._max_chars:
            raise _too_long(self._max_chars)

    def text(self) -> str:
        return "".join(self._parts)


def _too_long(max_chars: int) -> Unreadable:
    return Unreadable(f"the document holds more than {max_chars:,} characters of text, the limit")


def _at_most(text: str, limits: Limits) -> str:
    if len(text) > limits.max_chars:
        raise _too_long(limits.max_chars)
    return text


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Any exception a library raises while reading a stranger's file means the file is unreadable.

    Their failure modes on malformed input are not a closed set (pypdf and
    python-docx raise KeyError, ValueError, zlib and lxml errors, ... besides
    their own). The blocks this guards hold library calls and the little code
    that lays out what they return, nothing else.
    """
    try:
        yield
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - the file is broken, not the code: its reason goes to the user
        raise Unreadable(f"the {what} could not be read: {str(exc) or type(exc).__name__}") from None


# --- PDF --------------------------------------------------------------------

# pypdf (>= 6, 7.1 installed) bounds decompression itself: each stream's
# filters stop at 75 MB of output (``pypdf.Configuration``'s
# ``zlib_maximum_output_length``, ``lzw_…``, ``run_length_…``, ``jbig2_…``;
# ``pypdf.filters.ZLIB_MAX_OUTPUT_LENGTH`` before 7), a declared ``/Length``
# past 75 MB is refused, and reading a page's content is bounded too. It raises
# ``LimitReachedError``, which ``_reading`` turns into ``Unreadable``. We rely
# on those defaults; ``max_chars`` and ``max_pages`` bound the rest.


def _pdf(data: bytes, limits: Limits) -> str:
    with _reading("PDF"):
        reader = pypdf.PdfReader(io.BytesIO(data))
        # Many PDFs are "encrypted" with an empty user password only to carry
        # permissions; those open. One that needs a password does not.
        opened = not reader.is_encrypted or reader.decrypt("") != pypdf.PasswordType.NOT_DECRYPTED
    if not opened:
        raise Unreadable("the PDF is encrypted")
    with _reading("PDF"):
        pages = len(reader.pages)
    if pages > limits.max_pages:
        raise Unreadable(f"the PDF has {pages:,} pages, more than the limit of {limits.max_pages:,}")
    text = _Text(limits)
    for number in range(pages):
        with _reading("PDF"):
            page_text = reader.pages[number].extract_text()
        text.add(page_text)
    return text.text()


# --- DOCX -------------------------------------------------------------------


def _docx(data: bytes, limits: Limits) -> str:
    _check_zip(data, limits)
    with _reading("DOCX"):
        document = docx.Document(io.BytesIO(data))
        blocks = document.iter_inner_content()
        text = _Text(limits)
        previous_was_item = False
        for block in blocks:
            line, is_item = _docx_block(block)
            # Items of one list stay on consecutive lines, as in Markdown.
            text.add(line, "\n" if is_item and previous_was_item else "\n\n")
            previous_was_item = is_item and bool(line.strip())
    return text.text()


def _check_zip(data: bytes, limits: Limits) -> None:
    """Refuse a zip bomb by the sizes its members declare, before anything is unpacked."""
    with _reading("DOCX"), zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
    total = sum(member.file_size for member in members)
    if total > limits.max_unpacked_bytes:
        raise Unreadable(
            f"the DOCX unpacks to {total:,} bytes, more than the limit of {limits.max_unpacked_bytes:,}"
        )
    for member in members:
        if member.file_size > _BOMB_MIN_BYTES and member.file_size > _BOMB_RATIO * max(member.compress_size, 1):
            raise Unreadable(
                f"the DOCX part {member.filename} unpacks {member.file_size // max(member.compress_size, 1):,}"
                f" times larger than it is stored, more than any document does"
            )


def _docx_block(block: Paragraph | Table) -> tuple[str, bool]:
    """One body block as text, and whether it is a list item."""
    if isinstance(block, Table):
        return _docx_table(block), False
    text = " ".join(block.text.split())
    style = (block.style.name if block.style is not None else None) or ""
    level = _heading_level(style)
    if level:
        return f"{'#' * level} {text}" if text else "", False
    # A list is a list style, or direct numbering on an ordinary paragraph
    # (python-docx has no public API for numbering: read <w:numPr> itself).
    numbered = block._p.pPr is not None and block._p.pPr.numPr is not None
    if style.startswith("List") or numbered:
        return (f"- {text}" if text else ""), True
    return text, False


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    name, _, number = style.partition(" ")
    if name == "Heading" and number.isascii() and number.isdigit():
        return min(max(int(number), 1), 6)
    return 0


def _docx_table(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells = []
        previous = None
        for cell in row.cells:
            # A cell merged across columns comes back once per column, as the same object.
            if cell is not previous:
                cells.append(" ".join(cell.text.split()))
            previous = cell
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# --- HTML -------------------------------------------------------------------

_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_INVISIBLE_TAGS = ("script", "style", "noscript", "template")
_BLOCK_TAGS = (
    "p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "li", "tr",
    "br", "blockquote", "pre", "table", "ul", "ol", "dl", "dt", "dd", "form", "figure", *_HEADING_TAGS,
)
# trafilatura writes Markdown tables: "| a | b |" rows and a "|---|---|" rule.
# ([ \t], not \s: \s would run across the blank line that ends the table.)
_TABLE_RULE = re.compile(r"^\|(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*\n?", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\|[ \t]*(.*?)[ \t]*\|[ \t]*$", re.MULTILINE)


def html_main_text(html: str | bytes, *, url: str | None = None) -> str:
    """The main text of an HTML page as Markdown-ish text: navigation, footers, scripts dropped.

    trafilatura finds the main text (and decodes bytes by the charset the page
    declares, or detects it; past what it can, UTF-8 with replacement). When it finds nothing, as it does for a page too
    small to look like one, the page's visible text is taken instead, its
    ``<h1>``-``<h6>`` kept as headings. The page's ``<title>`` goes first as a
    ``# `` heading unless the text already starts with a heading. Returns ""
    for a page with no text; raises ``Unreadable`` if the parser fails.
    """
    if isinstance(html, str):
        html = _UNSTORABLE.sub("", html)  # lxml stops reading a str at a lone surrogate
    with _reading("HTML page"):
        tree = trafilatura.load_html(html)  # None for a fragment that does not look like a page
        main = _main_text(tree, url) if tree is not None else ""
    if tree is not None and main:
        return _titled(main, tree)
    if tree is None:
        tree = _fallback_tree(html)
        if tree is None:
            return ""
    return _titled(_tidy(_visible_text(tree)), tree)


def _main_text(tree: lxml.html.HtmlElement, url: str | None) -> str:
    extracted = trafilatura.extract(  # works on a copy: ``tree`` is left as it was
        tree, url=url, output_format="markdown", include_tables=True, include_links=False, favor_recall=True,
    )
    return _tidy(_plain_tables(extracted)) if extracted else ""


def _titled(text: str, tree: lxml.html.HtmlElement) -> str:
    title = " ".join((tree.findtext(".//title") or "").split())
    if not title or text.startswith("#"):
        return text
    return f"# {title}\n\n{text}" if text else f"# {title}"


def _fallback_tree(html: str | bytes) -> lxml.html.HtmlElement | None:
    markup = html.decode("utf-8", errors="replace") if isinstance(html, bytes) else html
    if not markup.strip():
        return None
    # Bytes with an explicit encoding: lxml refuses a str that declares one (<?xml encoding=...?>).
    parser = lxml.html.HTMLParser(encoding="utf-8")
    with _reading("HTML page"):
        return lxml.html.document_fromstring(markup.encode("utf-8", errors="replace"), parser=parser)


def _plain_tables(markdown: str) -> str:
    return _TABLE_ROW.sub(lambda row: row.group(1), _TABLE_RULE.sub("", markdown))


def _visible_text(tree: lxml.html.HtmlElement) -> str:
    """The text a browser would show, roughly: lxml's ``text_content`` with blocks on their own lines."""
    # A fragment parses to its own root (a <div>), a page to <html> with a <body>.
    body = tree.find("body") if tree.tag == "html" else tree
    if body is None:
        return ""
    for element in list(body.iter(*_INVISIBLE_TAGS)):
        element.drop_tree()
    for element in list(body.iter(*_HEADING_TAGS)):
        heading = " ".join(element.text_content().split())
        for child in list(element):
            element.remove(child)
        element.text = f"{'#' * int(element.tag[1])} {heading}" if heading else ""
    for element in body.iter(*_BLOCK_TAGS):
        element.tail = ("\n" if element.tag == "br" else "\n\n") + (element.tail or "")
    lines = (" ".join(line.split()) for line in body.text_content().split("\n"))
    return "\n".join(lines)


# --- CSV --------------------------------------------------------------------

_SNIFF_CHARS = 4096


def _csv(text: str, limits: Limits) -> str:
    """Each row as one paragraph of "header: value" pairs, so every chunk explains itself."""
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:_SNIFF_CHARS], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    out = _Text(limits)
    with _reading("CSV"):
        rows = csv.reader(io.StringIO(text, newline=""), dialect)
        headers = [" ".join(cell.split()) for cell in next(rows, [])]
        for row in rows:
            pairs = [
                f"{_header(headers, index)}: {value}"
                for index, value in enumerate(" ".join(cell.split()) for cell in row)
                if value
            ]
            out.add("; ".join(pairs))
    return out.text()


def _header(headers: list[str], index: int) -> str:
    return headers[index] if index < len(headers) and headers[index] else f"column {index + 1}"


# --- all kinds --------------------------------------------------------------

# NUL: PostgreSQL stores none. Lone surrogates: not characters, UTF-8 has none.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    text = _UNSTORABLE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\v", "\n")
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUN.sub("\n\n", text).strip()
