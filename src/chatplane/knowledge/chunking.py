"""Structured text (``convert.to_text``) to the chunks a knowledge base searches.

A chunk is what retrieval hands the model, so each should be a piece of one
topic, large enough to answer from and small enough to fit many in a prompt.
The rules, in order:

1. Sections. The text is split at Markdown heading lines (``#`` to ``######``
   then a space, up to three spaces of indent), but not inside a fenced code
   block (three backticks or ``~~~``), where ``# `` starts a shell comment.
   A chunk's ``title`` is where it sits: the source title, then the headings
   above it, joined by " > " ("Pricing FAQ > Plans > Premium"); before the
   first heading, just the source title. Heading lines are in titles, never in
   a chunk's text.
2. Pieces. Within a section, paragraphs (blank-line separated). A paragraph
   longer than ``max_chars`` is split into its lines (a table's rows, a
   list's items, a PDF's lines), a line longer than ``max_chars`` into
   sentences (a small regex: ``.``, ``!`` or ``?``, whitespace, then a capital,
   digit or quote; this is chunking, not parsing), and a sentence longer than
   ``max_chars`` is cut at the last whitespace before ``max_chars`` (anywhere,
   if it has none).
3. Packing. Consecutive pieces of one section fill a chunk greedily up to
   ``max_chars``, joined as they were: a blank line between paragraphs, a line
   break between lines, a space between sentences and cut parts.
4. Small chunks. A chunk shorter than ``min_chars`` takes pieces from the end
   of the chunk before it in its section, as long as that one stays at least
   ``min_chars`` long. (Merging the two whole would pass ``max_chars``: the
   greedy packing already stopped there.) A chunk still short at the end of
   its section is merged into the next section's first chunk when both fit in
   ``max_chars``, under the earlier title; short sections can chain this way.
   Otherwise it stays small: a short last chunk, a short section followed by a
   long one, a short piece between two pieces near ``max_chars``.

No chunk passes ``max_chars`` and none is empty. Every character of text
that is not a heading line is in exactly one chunk, in order, up to
whitespace: runs of blank lines and the whitespace at a cut are not kept.
Time and memory are linear in the text's length; the work is regular
expressions over the whole text plus a loop over paragraphs and pieces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

PATH_SEPARATOR = " > "

# A heading line, or a code fence line (which turns headings off until the next one).
_MARKERS = re.compile(
    r"^ {0,3}(?:(?P<fence>```|~~~).*|(?P<hashes>#{1,6})[ \t]+(?P<heading>.*\S)[ \t]*)$", re.MULTILINE,
)
_CLOSING_HASHES = re.compile(r"[ \t]+#+$")  # "## Plans ##" is the heading "Plans"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
# The whitespace after a sentence's end (a closing quote or bracket may follow
# the stop), when what comes next looks like a sentence's start.
_SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+(?=[\"'\u201c\u2018(\[A-Z0-9\u00c0-\u00de\u0391-\u03a9\u0410-\u042f])"
)
_PARAGRAPH = "\n\n"
_WHITESPACE = (" ", "\t")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a source as it is stored, indexed and handed to the model."""

    position: int  # 0, 1, 2 ... in document order
    title: str  # the source title, then the headings above the chunk, joined by " > "
    text: str  # the chunk's text; the heading lines are in title, not here


# (text, joiner): the joiner goes between a piece and the one before it when
# both are in one chunk. A plain tuple, as a long text has millions of pieces.
_Piece = tuple[str, str]


@dataclass(slots=True)
class _Draft:
    """A chunk being built: its pieces and its size as they would be joined."""

    title: str
    pieces: list[_Piece]
    size: int
    section: int  # which section it came from: small chunks merge across sections only once

    def text(self) -> str:
        first, rest = self.pieces[0], self.pieces[1:]
        return first[0] + "".join([joiner + text for text, joiner in rest])


def chunk_text(text: str, *, title: str, min_chars: int, max_chars: int) -> list[Chunk]:
    """``text`` cut into chunks of at most ``max_chars`` by the rules of the module docstring."""
    assert 0 <= min_chars < max_chars, "min_chars must be below max_chars"
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    drafts = _merge_across_sections(_drafts(text, title, min_chars, max_chars), min_chars, max_chars)
    return [Chunk(position, draft.title, draft.text()) for position, draft in enumerate(drafts)]


def _drafts(text: str, title: str, min_chars: int, max_chars: int) -> Iterator[_Draft]:
    # A generator, so that a draft merged into the one before is freed at
    # once: a text of a million tiny sections would otherwise hold a million
    # drafts, and the garbage collector would walk them over and over.
    for number, (section_title, body) in enumerate(_sections(text, title)):
        section = _pack(_pieces(body, max_chars), section_title, number, max_chars)
        _even_out(section, min_chars, max_chars)
        yield from section


# --- sections ---------------------------------------------------------------


def _sections(text: str, title: str) -> Iterator[tuple[str, str]]:
    """(title, body) of each section with text, in order."""
    levels: list[int] = []  # of the headings above
    names: list[str] = [title] if title else []  # the source title, then those headings
    start = 0
    in_fence = False
    for marker in _MARKERS.finditer(text):
        fence, hashes, heading = marker.groups()
        if fence:
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        body = text[start:marker.start()]
        if body and not body.isspace():
            yield PATH_SEPARATOR.join(names), body
        start = marker.end()
        if heading.endswith("#"):
            heading = _CLOSING_HASHES.sub("", heading).strip() or heading
        while levels and levels[-1] >= len(hashes):
            levels.pop()
            names.pop()
        levels.append(len(hashes))
        names.append(heading)
    body = text[start:]
    if body and not body.isspace():
        yield PATH_SEPARATOR.join(names), body


# --- pieces -----------------------------------------------------------------


def _pieces(body: str, max_chars: int) -> list[_Piece]:
    pieces: list[_Piece] = []
    for paragraph in _PARAGRAPH_BREAK.split(body.strip()):
        paragraph = paragraph.strip()
        if len(paragraph) > max_chars:
            _split_paragraph(paragraph, max_chars, pieces)
        elif paragraph:
            pieces.append((paragraph, _PARAGRAPH))
    return pieces


def _split_paragraph(paragraph: str, max_chars: int, pieces: list[_Piece]) -> None:
    """Lines, then sentences of a line too long, then parts of a sentence too long."""
    joiner = _PARAGRAPH
    for line in paragraph.split("\n"):
        line = line.strip()
        if not line:
            continue
        for sentence in [line] if len(line) <= max_chars else _SENTENCE_BREAK.split(line):
            for part in [sentence] if len(sentence) <= max_chars else _cut(sentence, max_chars):
                pieces.append((part, joiner))
                joiner = " "
        joiner = "\n"


def _cut(sentence: str, max_chars: int) -> list[str]:
    """``sentence`` in parts of at most ``max_chars``, cut at the last whitespace that allows it."""
    parts: list[str] = []
    start = 0
    while len(sentence) - start > max_chars:
        end = start + max_chars
        space = max(sentence.rfind(blank, start + 1, end + 1) for blank in _WHITESPACE)
        cut = space if space > start else end
        parts.append(sentence[start:cut].rstrip())
        start = cut
        while start < len(sentence) and sentence[start] in _WHITESPACE:
            start += 1
    if start < len(sentence):
        parts.append(sentence[start:])
    return [part for part in parts if part]


# --- chunks -----------------------------------------------------------------


def _pack(pieces: list[_Piece], title: str, section: int, max_chars: int) -> list[_Draft]:
    drafts: list[_Draft] = []
    last: _Draft | None = None
    for piece in pieces:
        text, joiner = piece
        size = last.size + len(joiner) + len(text) if last is not None else max_chars + 1
        if last is not None and size <= max_chars:
            last.pieces.append(piece)
            last.size = size
        else:
            last = _Draft(title, [piece], len(text), section)
            drafts.append(last)
    return drafts


def _even_out(drafts: list[_Draft], min_chars: int, max_chars: int) -> None:
    """Give each short chunk pieces from the end of the one before, while that one stays long enough."""
    for index in range(1, len(drafts)):
        before, short = drafts[index - 1], drafts[index]
        moved: list[_Piece] = []  # taken from before's end, last first
        front = short.pieces[0]
        while short.size < min_chars and len(before.pieces) > 1:
            piece = before.pieces[-1]
            grown = short.size + len(front[1]) + len(piece[0])
            shrunk = before.size - len(piece[1]) - len(piece[0])
            if grown > max_chars or shrunk < min_chars:
                break
            moved.append(before.pieces.pop())
            before.size, short.size, front = shrunk, grown, piece
        short.pieces[:0] = reversed(moved)


def _merge_across_sections(drafts: Iterator[_Draft], min_chars: int, max_chars: int) -> list[_Draft]:
    """Merge a section's short last chunk into the next section's first, under the earlier title."""
    merged: list[_Draft] = []
    for draft in drafts:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.size < min_chars
            and last.section != draft.section
            and last.size + len(_PARAGRAPH) + draft.size <= max_chars
        ):
            last.pieces.append((draft.pieces[0][0], _PARAGRAPH))
            last.pieces.extend(draft.pieces[1:])
            last.size += len(_PARAGRAPH) + draft.size
            last.section = draft.section  # it is now the start of that section
            continue
        merged.append(draft)
    return merged
