"""knowledge.convert: each kind read into the same Markdown-ish text; every file made here, in the test."""

from __future__ import annotations

import io
import re
import zipfile

import docx
import pypdf
import pytest
import trafilatura
from fpdf import FPDF

from chatplane.knowledge import convert
from chatplane.knowledge.convert import (
    Limits,
    Unreadable,
    Unsupported,
    html_main_text,
    kind_of,
    to_text,
)

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
RAREST = "The zeppelin lands at platform nine on Tuesdays."


def make_pdf(pages: list[str], *, user_password: str | None = None, owner_password: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    if owner_password is not None:
        pdf.set_encryption(owner_password=owner_password, user_password=user_password)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Handbook", 0)  # the Title style
    document.add_heading("Plans", 1)
    document.add_paragraph("Every plan includes support.")
    document.add_paragraph("Basic for small teams", style="List Bullet")
    document.add_paragraph("Premium for large teams", style="List Number")
    table = document.add_table(rows=3, cols=2)
    for row, cells in zip(table.rows, [("Plan", "Price"), ("Basic", "10"), ("Premium", "20")], strict=True):
        for cell, value in zip(row.cells, cells, strict=True):
            cell.text = value
    document.add_heading("Billing", 2)
    document.add_paragraph("Invoices go out monthly.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


# --- kind_of ----------------------------------------------------------------

SAMPLES = {"pdf": b"%PDF-1.7\n", "docx": b"PK\x03\x04rest", "html": b"<p>hi</p>", "markdown": b"# hi",
           "text": b"hi", "csv": b"a,b\n1,2\n"}


@pytest.mark.parametrize(("filename", "kind"), [
    ("a.pdf", "pdf"), ("a.docx", "docx"), ("a.html", "html"), ("a.htm", "html"), ("a.md", "markdown"),
    ("a.markdown", "markdown"), ("a.txt", "text"), ("a.text", "text"), ("a.csv", "csv"), ("REPORT.PDF", "pdf"),
])
def test_kind_by_extension(filename: str, kind: str) -> None:
    assert kind_of(filename, None, SAMPLES[kind]) == kind
    # The extension wins over a generic or wrong content type.
    assert kind_of(filename, "application/octet-stream", SAMPLES[kind]) == kind


@pytest.mark.parametrize(("content_type", "kind"), [
    ("application/pdf", "pdf"), (DOCX_TYPE, "docx"), ("text/html; charset=utf-8", "html"),
    ("text/markdown", "markdown"), ("text/plain", "text"), ("TEXT/CSV", "csv"),
])
def test_kind_by_content_type(content_type: str, kind: str) -> None:
    assert kind_of("upload", content_type, SAMPLES[kind]) == kind
    assert kind_of("page.php", content_type, SAMPLES[kind]) == kind  # an extension we do not know


def test_extension_before_content_type() -> None:
    assert kind_of("notes.md", "text/plain", b"# Notes") == "markdown"


@pytest.mark.parametrize(("filename", "content_type", "named"), [
    ("x.png", "image/png", "image/png"), ("x.png", None, ".png"), ("x.png", "application/octet-stream", ".png"),
    ("upload", None, "extension-less"),
])
def test_unsupported_types_are_named(filename: str, content_type: str | None, named: str) -> None:
    with pytest.raises(Unsupported) as refused:
        kind_of(filename, content_type, PNG)
    assert named in str(refused.value)
    assert "send PDF, DOCX, HTML, Markdown, plain text or CSV" in str(refused.value)


def test_bytes_must_match_the_kind() -> None:
    with pytest.raises(Unsupported, match="not a PDF"):
        kind_of("report.pdf", "application/pdf", b"<html>surprise</html>")
    with pytest.raises(Unsupported, match="not a DOCX"):
        kind_of("report.docx", DOCX_TYPE, b"%PDF-1.7\n")
    with pytest.raises(Unsupported, match="NUL"):
        kind_of("notes.txt", "text/plain", b"looks like text\x00\x01\x02")
    with pytest.raises(Unsupported, match="NUL"):
        kind_of("picture.txt", None, PNG)
    with pytest.raises(Unsupported, match="UTF-8"):
        kind_of("prices.csv", None, "café;3\n".encode("latin-1"))


def test_text_checks_only_the_head_and_tolerates_a_cut_character() -> None:
    # A multi-byte character cut by the 8 KB boundary is not an error.
    data = b"a" * 8191 + "é rest".encode()
    assert kind_of("notes.txt", None, data) == "text"
    # HTML may declare another charset: only NUL bytes make it binary.
    assert kind_of("page.html", None, "<p>café</p>".encode("latin-1")) == "html"


# --- PDF --------------------------------------------------------------------


def test_pdf_pages_in_order() -> None:
    pages = ["The first page talks about plans.", RAREST, "The third page closes the document."]
    text = to_text(make_pdf(pages), "pdf")
    assert RAREST in text
    assert text.index("first page") < text.index(RAREST) < text.index("third page")
    assert len(text.split("\n\n")) == 3  # pages separated by one blank line


def test_pdf_with_more_pages_than_the_limit() -> None:
    data = make_pdf([f"Page {n}." for n in range(6)])
    with pytest.raises(Unreadable, match="6 pages, more than the limit of 5"):
        to_text(data, "pdf", Limits(max_pages=5))
    assert "Page 5." in to_text(data, "pdf", Limits(max_pages=6))


def test_pdf_extraction_stops_once_past_max_chars(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    extract = pypdf.PageObject.extract_text

    def counting(page: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        read.append(1)
        return extract(page, *args, **kwargs)

    monkeypatch.setattr(pypdf.PageObject, "extract_text", counting)
    data = make_pdf(["A sentence of some length on every page. " * 5] * 10)
    with pytest.raises(Unreadable, match="more than 300 characters"):
        to_text(data, "pdf", Limits(max_chars=300))
    assert 0 < len(read) < 10


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_broken_pdf_is_unreadable(damage: str) -> None:
    whole = make_pdf(["Some text.", "More text."])
    data = whole[: len(whole) // 3] if damage == "truncated" else b"%PDF-1.7\n" + bytes(range(256)) * 40
    with pytest.raises(Unreadable) as failed:
        to_text(data, "pdf")
    assert str(failed.value).startswith("the PDF could not be read: ")
    assert "Traceback" not in str(failed.value)


def test_encrypted_pdf() -> None:
    locked = make_pdf([RAREST], owner_password="owner", user_password="secret")
    with pytest.raises(Unreadable, match="^the PDF is encrypted$"):
        to_text(locked, "pdf")
    # Encrypted with an empty user password (permissions only): it opens.
    assert RAREST in to_text(make_pdf([RAREST], owner_password="owner"), "pdf")


# --- DOCX -------------------------------------------------------------------


def test_docx_blocks_in_body_order() -> None:
    assert to_text(make_docx(), "docx").split("\n") == [
        "# Handbook", "", "# Plans", "", "Every plan includes support.", "",
        "- Basic for small teams", "- Premium for large teams", "",
        "Plan | Price", "Basic | 10", "Premium | 20", "",
        "## Billing", "", "Invoices go out monthly.",
    ]


def test_docx_merged_cells_are_read_once() -> None:
    document = docx.Document()
    table = document.add_table(rows=1, cols=3)
    table.cell(0, 0).merge(table.cell(0, 1)).text = "Both columns"
    table.cell(0, 2).text = "Third"
    out = io.BytesIO()
    document.save(out)
    assert to_text(out.getvalue(), "docx") == "Both columns | Third"


def test_docx_zip_bomb_is_refused_before_python_docx(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:
        raise AssertionError("python-docx opened a zip bomb")

    monkeypatch.setattr(convert.docx, "Document", never)
    bomb = make_zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": bytes(2_000_000)})
    assert len(bomb) < 20_000
    with pytest.raises(Unreadable, match="unpacks to 2,000,0.. bytes, more than the limit of 1,000,000"):
        to_text(bomb, "docx", Limits(max_unpacked_bytes=1_000_000))
    # Within the total, one part compressed a thousand to one is refused too.
    ratio_bomb = make_zip({"word/media/image1.png": bytes(11_000_000)})
    with pytest.raises(Unreadable, match="times larger than it is stored"):
        to_text(ratio_bomb, "docx")


def test_a_zip_that_is_not_a_docx() -> None:
    with pytest.raises(Unreadable, match="^the DOCX could not be read: "):
        to_text(make_zip({"notes.txt": b"hello"}), "docx")
    with pytest.raises(Unreadable, match="^the DOCX could not be read: "):
        to_text(b"PK\x03\x04 but not really a zip", "docx")


# --- HTML -------------------------------------------------------------------

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Pricing FAQ</title>
<script>var tracking = "SCRIPTTEXT";</script><style>body { color: STYLETEXT; }</style></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">NAVTEXT about us</a></li></ul></nav>
<article>
<h1>Plans</h1>
<p>Our plans are simple. The basic plan costs ten euros a month and includes all a small team needs.</p>
<h2>Premium</h2>
<p>The premium plan costs twenty euros a month and adds priority support for the whole company.</p>
<ul><li>First item of the list</li><li>Second item of the list</li></ul>
<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Basic</td><td>10</td></tr></table>
<p>Read more about <a href="/offers">our offers</a> on the offers page.</p>
</article>
<footer><p>FOOTERTEXT Copyright Example Corp. All rights reserved.</p></footer>
<script>console.log("MORESCRIPT")</script>
</body></html>"""


def test_html_main_text() -> None:
    text = to_text(PAGE, "html")
    lines = text.split("\n")
    assert lines[0] == "# Plans"
    assert "## Premium" in lines
    assert "- First item of the list" in lines
    assert "Plan | Price" in lines and "Basic | 10" in lines  # rows, not a Markdown table
    assert "Read more about our offers on the offers page." in lines  # links as plain text
    for dropped in ("SCRIPTTEXT", "MORESCRIPT", "STYLETEXT", "NAVTEXT", "FOOTERTEXT", "|---"):
        assert dropped not in text
    assert text.index("Our plans are simple") < text.index("## Premium") < text.index("Second item")


def test_html_title_first_when_the_text_has_no_heading() -> None:
    page = PAGE.replace(b"<h1>Plans</h1>", b"").replace(b"<h2>Premium</h2>", b"")
    text = html_main_text(page)
    assert text.startswith("# Pricing FAQ\n\nOur plans are simple.")


def test_html_falls_back_to_the_visible_text() -> None:
    options = {"output_format": "markdown", "include_tables": True, "include_links": False, "favor_recall": True}
    sentence = b"<p>We open at nine.</p>"
    heading = b"<h1>Opening hours</h1><script>var x = 'SCRIPTTEXT';</script>"
    # The premise: trafilatura gives these up.
    assert trafilatura.extract(sentence, **options) is None
    assert trafilatura.extract(heading, **options) is None
    assert html_main_text(sentence) == "We open at nine."
    assert html_main_text(heading) == "# Opening hours"
    assert html_main_text(b"<title>Hours</title><p>We open at nine.</p>") == "# Hours\n\nWe open at nine."


def test_html_charset_and_empty_pages() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body><p>Le café ouvre à neuf heures.</p></body></html>'
    assert "Le café ouvre à neuf heures." in to_text(page.encode("latin-1"), "html")
    # Lone surrogates (no character, PostgreSQL refuses them) are dropped; the rest is kept.
    assert html_main_text("<html><body><p>caf\ud800e opens at nine</p></body></html>") == "cafe opens at nine"
    assert html_main_text(b"") == ""
    with pytest.raises(Unreadable, match="no text"):
        to_text(b"<html><body><script>only()</script></body></html>", "html")


# --- Markdown, text, CSV ----------------------------------------------------


def test_markdown_as_is() -> None:
    source = "# Title\n\nSome *text* with `code`.\n\n- item\n- item two\n"
    assert to_text(source.encode(), "markdown") == source.strip()


def test_text_normalised() -> None:
    data = "\ufeffFirst line   \r\nSecond line\r\n\r\n\r\n\r\n\r\nAfter a gap\x00.\t\r\n".encode()
    assert to_text(data, "text") == "First line\nSecond line\n\nAfter a gap."


def test_text_over_max_chars() -> None:
    with pytest.raises(Unreadable, match="more than 1,000 characters"):
        to_text(b"x" * 1001, "text", Limits(max_chars=1000))
    assert to_text(b"x" * 1000, "text", Limits(max_chars=1000)) == "x" * 1000


def test_csv_rows_explain_themselves() -> None:
    data = b'name;city;note\nAnn;Paris;\nBob;;likes tea\n;;\nCid;Oslo;"two\nlines";extra\n'
    assert to_text(data, "csv").split("\n\n") == [
        "name: Ann; city: Paris",
        "name: Bob; note: likes tea",
        "name: Cid; city: Oslo; note: two lines; column 4: extra",
    ]


def test_csv_with_commas_and_quotes() -> None:
    data = b'product,price,description\n"Widget, large",10,"Says ""hello"""\n'
    assert to_text(data, "csv") == 'product: Widget, large; price: 10; description: Says "hello"'


def test_csv_over_max_chars_stops_early() -> None:
    data = ("id,value\n" + "".join(f"{n},some value\n" for n in range(10_000))).encode()
    with pytest.raises(Unreadable, match="more than 1,000 characters"):
        to_text(data, "csv", Limits(max_chars=1000))


def test_every_kind_tidies_its_output() -> None:
    documents = {"pdf": make_pdf(["One.", "Two."]), "docx": make_docx(), "html": PAGE,
                 "markdown": b"# A  \n\n\n\nb \x00", "text": b"a\r\n\r\n\r\n\r\nb", "csv": b"a,b\n1, 2 \n"}
    assert set(documents) == set(convert.KINDS)
    for kind, data in documents.items():
        text = to_text(data, kind)
        assert text and text == text.strip(), kind
        assert "\x00" not in text and "\r" not in text and "\n\n\n" not in text, kind
        assert not re.search(r"[ \t]$", text, re.MULTILINE), kind


def test_unknown_kind_is_a_bug_not_a_user_error() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        to_text(b"data", "xlsx")
