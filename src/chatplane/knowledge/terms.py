"""Text as full-text search sees it: case-folded, stemmed words.

Chunks are indexed by these terms, not by the database's own text analysis
(FTS5's tokenizers, PostgreSQL's text search configurations), and queries
are turned into the same terms: so SQLite and PostgreSQL index and match the
same words, and ``search`` can score a chunk the same way on both from the
terms stored with it. The database indexes the space-separated terms with
its plainest tokenizer (FTS5 ``unicode61``, PostgreSQL's ``simple``), which
splits them back exactly as they were joined: a term is a run of letters
and digits (an underscore separates, as it does for ``unicode61``).

Stemming is Snowball's English stemmer (``snowballstemmer``): "refunds",
"refunded" and "refunding" are one term. Words of other languages are kept
whole, case-folded.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import snowballstemmer

# Letters and digits; not the underscore, which FTS5's unicode61 tokenizer splits on.
_WORD = re.compile(r"[^\W_]+")
# Longer "words" are base64, hashes, minified code: never worth a term.
MAX_TERM = 64

_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def terms(text: str) -> list[str]:
    """The terms of ``text``, in order, repeats kept."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [_stem(word) for word in _WORD.findall(folded) if len(word) <= MAX_TERM]
