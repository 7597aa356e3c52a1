"""knowledge.chunking: titles from headings, sizes within bounds, nothing lost, linear on large texts."""

from __future__ import annotations

import itertools
import random
import re
import time

import pytest

from chatplane.knowledge.chunking import Chunk, chunk_text

HEADING = re.compile(r"^#{1,6} ")


def body_words(text: str) -> list[str]:
    """The words of every line that is not a heading, in order."""
    return [word for line in text.split("\n") if not HEADING.match(line) for word in line.split()]


def chunk_words(chunks: list[Chunk]) -> list[str]:
    return [word for chunk in chunks for word in chunk.text.split()]


def check(chunks: list[Chunk], text: str, *, min_chars: int, max_chars: int) -> None:
    """The properties every chunking has (the module docstring's last paragraph)."""
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))
    assert chunk_words(chunks) == body_words(text)
    for chunk in chunks:
        assert chunk.text.strip() and chunk.text == chunk.text.strip()
        assert len(chunk.text) <= max_chars
        assert not any(HEADING.match(line) for line in chunk.text.split("\n"))
    # A chunk left short could not have been joined with the next one.
    for short, after in itertools.pairwise(chunks):
        if len(short.text) < min_chars:
            assert len(short.text) + 2 + len(after.text) > max_chars, (short, after)


def sentence(rng: random.Random, words: int) -> str:
    vocabulary = ["plan", "price", "support", "agent", "team", "month", "invoice", "refund", "chat", "reply"]
    return " ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "."


def generated(rng: random.Random, chars: int) -> str:
    """A document of about ``chars`` characters: headings of every level, paragraphs, lists, long paragraphs."""
    parts: list[str] = []
    size = 0
    while size < chars:
        roll = rng.random()
        if roll < 0.08:
            part = "#" * rng.randint(1, 4) + f" Section {len(parts)}"
        elif roll < 0.15:
            part = "\n".join(f"- {sentence(rng, rng.randint(2, 8))}" for _ in range(rng.randint(2, 6)))
        elif roll < 0.18:
            part = " ".join(sentence(rng, rng.randint(5, 30)) for _ in range(rng.randint(20, 60)))  # > max_chars
        else:
            part = " ".join(sentence(rng, rng.randint(3, 20)) for _ in range(rng.randint(1, 6)))
        parts.append(part)
        size += len(part) + 2
    return "\n\n".join(parts)


def test_headings_become_titles() -> None:
    text = (
        "Before any heading.\n\n"
        "# Plans\n\nAll plans.\n\n"
        "## Premium ##\n\nThe premium plan.\n\n"
        "### Extras\n\nExtras of premium.\n\n"
        "## Basic\n\nThe basic plan.\n\n"
        "```\n# a shell comment, not a heading\n```\n\n"
        "# Support\n\nWrite to us.\n"
    )
    chunks = chunk_text(text, title="Pricing FAQ", min_chars=0, max_chars=200)
    assert [(chunk.title, chunk.text) for chunk in chunks] == [
        ("Pricing FAQ", "Before any heading."),
        ("Pricing FAQ > Plans", "All plans."),
        ("Pricing FAQ > Plans > Premium", "The premium plan."),
        ("Pricing FAQ > Plans > Premium > Extras", "Extras of premium."),
        ("Pricing FAQ > Plans > Basic", "The basic plan.\n\n```\n# a shell comment, not a heading\n```"),
        ("Pricing FAQ > Support", "Write to us."),
    ]


def test_headings_without_a_source_title_and_with_crlf() -> None:
    chunks = chunk_text("# Plans\r\n\r\nAll plans.\r\n", title="", min_chars=0, max_chars=100)
    assert [(chunk.title, chunk.text) for chunk in chunks] == [("Plans", "All plans.")]


def test_empty_sections_and_texts_give_no_chunks() -> None:
    assert chunk_text("", title="T", min_chars=10, max_chars=100) == []
    assert chunk_text("# A\n\n   \n\n## B\n\n\t\n", title="T", min_chars=10, max_chars=100) == []


def test_a_generated_document_keeps_every_word_within_bounds() -> None:
    rng = random.Random(7)
    text = generated(rng, 200_000)
    for min_chars, max_chars in [(200, 1000), (0, 300), (400, 500), (50, 2000)]:
        chunks = chunk_text(text, title="Doc", min_chars=min_chars, max_chars=max_chars)
        check(chunks, text, min_chars=min_chars, max_chars=max_chars)
        assert all(chunk.title.startswith("Doc") for chunk in chunks)


def test_a_long_paragraph_without_punctuation_is_cut_at_spaces() -> None:
    rng = random.Random(3)
    paragraph = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(10_000))[:50_000].strip()
    assert len(paragraph) >= 49_990
    chunks = chunk_text(paragraph, title="T", min_chars=100, max_chars=700)
    check(chunks, paragraph, min_chars=100, max_chars=700)
    assert len(chunks) >= 50_000 // 700
    assert " ".join(chunk.text for chunk in chunks) == paragraph  # cut at single spaces, nothing else changed


def test_a_word_longer_than_max_chars_is_cut_anywhere() -> None:
    word = "x" * 10_000
    chunks = chunk_text(f"Before.\n\n{word}\n\nAfter.", title="T", min_chars=0, max_chars=1000)
    assert [chunk.text for chunk in chunks] == ["Before.", *["x" * 1000] * 10, "After."]
    # The rest of a cut word goes on with what follows it.
    chunks = chunk_text(f"{word}xy\n\nAfter.", title="T", min_chars=0, max_chars=1000)
    assert [chunk.text for chunk in chunks[-2:]] == ["x" * 1000, "xy\n\nAfter."]


def test_a_long_paragraph_is_cut_at_sentences() -> None:
    rng = random.Random(5)
    sentences = [sentence(rng, rng.randint(4, 25)) for _ in range(300)]
    paragraph = " ".join(sentences)
    chunks = chunk_text(paragraph, title="T", min_chars=200, max_chars=800)
    check(chunks, paragraph, min_chars=200, max_chars=800)
    for chunk in chunks:
        assert chunk.text.endswith(".")
        assert chunk.text.split(". ")[0] + "." in sentences  # starts at a sentence's start


def test_a_long_table_is_cut_between_rows() -> None:
    rows = [f"Plan {n} | {n * 10} euros | {'support ' * (n % 7)}".strip() for n in range(200)]
    table = "\n".join(rows)
    chunks = chunk_text(f"# Prices\n\n{table}", title="T", min_chars=100, max_chars=600)
    check(chunks, table, min_chars=100, max_chars=600)
    assert [line for chunk in chunks for line in chunk.text.split("\n")] == rows


def test_a_short_last_chunk_takes_from_the_one_before() -> None:
    text = "\n\n".join(f"Paragraph {n:02}" + " word" * 17 for n in range(11))  # 11 of 97 characters
    chunks = chunk_text(text, title="T", min_chars=300, max_chars=1000)
    check(chunks, text, min_chars=300, max_chars=1000)
    # Greedy packing alone would leave 10 paragraphs (988 characters) and then 1.
    assert [chunk.text.count("Paragraph") for chunk in chunks] == [7, 4]
    assert all(len(chunk.text) >= 300 for chunk in chunks)


def test_short_sections_merge_forward_under_the_earlier_title() -> None:
    text = "# Plans\n\nSee below.\n\n## Basic\n\nTen euros.\n\n## Premium\n\nTwenty euros a month, with support."
    chunks = chunk_text(text, title="FAQ", min_chars=100, max_chars=500)
    assert [(chunk.title, chunk.text) for chunk in chunks] == [
        ("FAQ > Plans", "See below.\n\nTen euros.\n\nTwenty euros a month, with support."),
    ]
    # A short section before a long one stays short rather than pass max_chars.
    long = " ".join(["Twenty euros a month, with support."] * 13)
    chunks = chunk_text(f"# Plans\n\nSee below.\n\n## Premium\n\n{long}", title="FAQ", min_chars=100, max_chars=475)
    assert [(chunk.title, len(chunk.text)) for chunk in chunks] == [("FAQ > Plans", 10), ("FAQ > Plans > Premium", 467)]


def test_min_must_be_below_max() -> None:
    with pytest.raises(AssertionError):
        chunk_text("text", title="T", min_chars=500, max_chars=500)


def test_five_million_characters() -> None:
    rng = random.Random(11)
    text = generated(rng, 5_000_000)
    started = time.perf_counter()
    chunks = chunk_text(text, title="Big", min_chars=300, max_chars=1500)
    elapsed = time.perf_counter() - started
    print(f"chunked {len(text):,} characters into {len(chunks):,} chunks in {elapsed:.2f} s")
    check(chunks, text, min_chars=300, max_chars=1500)
    assert len(chunks) >= len(text) // 1500


@pytest.mark.parametrize("shape", ["tiny paragraphs", "headings only", "tiny sentences", "one word"])
def test_five_million_characters_of_a_hostile_shape(shape: str) -> None:
    text = {
        "tiny paragraphs": "a\n\n" * 1_700_000,
        "headings only": "# h\nx\n" * 830_000,
        "tiny sentences": "Aa. " * 1_250_000,
        "one word": "x" * 5_000_000,
    }[shape]
    started = time.perf_counter()
    chunks = chunk_text(text, title="Big", min_chars=300, max_chars=1500)
    print(f"{shape}: {len(text):,} characters, {len(chunks):,} chunks in {time.perf_counter() - started:.2f} s")
    assert all(0 < len(chunk.text) <= 1500 for chunk in chunks)
    if shape == "one word":
        assert "".join(chunk.text for chunk in chunks) == text
    else:
        assert sum(len(chunk.text.split()) for chunk in chunks) == len(body_words(text))
