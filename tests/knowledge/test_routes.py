"""/api/knowledge-bases over real HTTP, on both databases: sources of every
kind indexed by the job worker, URL sources served by a loopback site, and
every error path the issue names."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import docx
import httpx
import pytest
from fpdf import FPDF

from tests.conftest import (
    Api,
    assert_error,
)
from tests.knowledge.conftest import MAX_FILE
from tests.knowledge.helpers import BASE, create, search, settled
from tests.knowledge.pages import Page, Site


def pdf_bytes(*pages: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def docx_bytes(heading: str, *paragraphs: str) -> bytes:
    document = docx.Document()
    document.add_heading(heading, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def multipart(api: Api, path: str, fields: dict[str, Any], files: list[tuple[str, bytes, str]]) -> httpx.Response:
    data = {"workspaceId": str(api.ws), **{k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}}
    return api.http.post(path, data=data, files=[("knowledge_base_files", f) for f in files])


# --- sources of every kind ---------------------------------------------------------


def test_texts_are_indexed_by_a_job_and_searchable(kb: Api) -> None:
    made = create(kb, knowledge_base_texts=[
        {"title": "Refunds", "text": "Refunds are paid within 14 days to the card used for the purchase."},
        {"title": "Shipping", "text": "Parcels ship from Rotterdam every weekday before noon."},
    ])
    assert made["status"] == "in_progress" and made["knowledge_base_name"] == "Help"
    assert [s["type"] for s in made["knowledge_base_sources"]] == ["text", "text"]
    assert {s["status"] for s in made["knowledge_base_sources"]} == {"pending"}
    done = settled(kb, made["knowledge_base_id"])
    assert done["status"] == "complete" and done["error_messages"] == []
    assert all(s["status"] == "complete" and s["chunk_count"] >= 1 for s in done["knowledge_base_sources"])
    assert done["chunk_count"] == sum(s["chunk_count"] for s in done["knowledge_base_sources"])
    refunds = done["knowledge_base_sources"][0]["source_id"]

    hits = search(kb, made["knowledge_base_id"], "when are refunds paid?")
    assert hits[0]["source_id"] == refunds and hits[0]["rank"] == 1
    assert "14 days" in hits[0]["text"] and 0 < hits[0]["score"] <= 1
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    # Stemming: "refunded" and "paying" find the same chunk.
    assert search(kb, made["knowledge_base_id"], "refunded paying")[0]["source_id"] == refunds
    # Nothing in the documents: nothing found.
    assert search(kb, made["knowledge_base_id"], "zeppelin") == []


def test_an_empty_knowledge_base_is_complete_at_once(kb: Api) -> None:
    made = create(kb)
    assert made["status"] == "complete" and made["knowledge_base_sources"] == []


def test_files_of_every_kind_by_multipart(kb: Api) -> None:
    files = [
        ("guide.pdf", pdf_bytes("Page one is about nothing much.", "The warranty lasts 36 months from delivery."),
         "application/pdf"),
        ("policy.docx", docx_bytes("Returns", "Returns are accepted within 30 days with the receipt."),
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("prices.csv", b"plan,price\nbasic,9 euros\npremium,29 euros\n", "text/csv"),
        ("notes.md", b"# Opening hours\n\nThe helpdesk is open from 8 to 18 on weekdays.\n", "text/markdown"),
    ]
    response = multipart(kb, BASE, {
        "knowledge_base_name": "Files", "max_chunk_size": "500", "min_chunk_size": "50",
        "knowledge_base_texts": [{"title": "Greeting", "text": "Say hello politely."}],
    }, files)
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["max_chunk_size"] == 500 and made["min_chunk_size"] == 50
    sources = made["knowledge_base_sources"]
    assert [s["type"] for s in sources] == ["text", "document", "document", "document", "document"]
    assert [s["filename"] for s in sources[1:]] == [f[0] for f in files]
    assert [s["file_size"] for s in sources[1:]] == [len(f[1]) for f in files]
    done = settled(kb, made["knowledge_base_id"])
    assert done["status"] == "complete", done
    kb_id = made["knowledge_base_id"]
    for query, filename in [("how long is the warranty", "guide.pdf"), ("returns receipt", "policy.docx"),
                            ("premium price", "prices.csv"), ("helpdesk opening hours", "notes.md")]:
        hit = search(kb, kb_id, query)[0]
        source = next(s for s in done["knowledge_base_sources"] if s["source_id"] == hit["source_id"])
        assert source["filename"] == filename, (query, hit)
    # The original is kept and served back as it came, as a download that runs nothing.
    pdf_source = done["knowledge_base_sources"][1]
    original = kb.http.get(pdf_source["file_url"], params={"workspaceId": kb.ws})
    assert original.status_code == 200 and original.content == files[0][1]
    assert original.headers["content-security-policy"] == "sandbox"
    assert original.headers["content-disposition"].startswith("attachment")
    text_source = done["knowledge_base_sources"][0]
    assert kb.http.get(text_source["content_url"], params={"workspaceId": kb.ws}).text == "Say hello politely."


def test_chunks_of_a_source_in_order_with_titles(kb: Api) -> None:
    text = "# Plans\n\n" + "\n\n".join(f"Paragraph {i} talks about plan number {i} in some detail." for i in range(40))
    made = create(kb, knowledge_base_texts=[{"title": "Catalogue", "text": text}], max_chunk_size=300,
                  min_chunk_size=100)
    done = settled(kb, made["knowledge_base_id"])
    source = done["knowledge_base_sources"][0]
    path = f"{BASE}/{made['knowledge_base_id']}/sources/{source['source_id']}/chunks"
    first = kb.get(path, limit=3).json()
    assert len(first["data"]) == 3 and first["pagination_key"]
    chunks = first["data"]
    key = first["pagination_key"]
    while key:
        page = kb.get(path, limit=3, paginationKey=key).json()
        chunks += page["data"]
        key = page["pagination_key"]
    assert len(chunks) == source["chunk_count"] > 3
    assert [c["position"] for c in chunks] == list(range(len(chunks)))
    assert all(len(c["text"]) <= 300 for c in chunks)
    assert all(c["title"].startswith("Catalogue") and "Plans" in c["title"] for c in chunks)
    assert "Paragraph 0 " in chunks[0]["text"] and "Paragraph 39 " in chunks[-1]["text"]
    assert_error(kb.get(path, paginationKey="garbage"), 422, field="paginationKey")


# --- URL sources ---------------------------------------------------------------------


def test_url_sources_fetched_with_main_text_and_failures_per_source(kb: Api, site: Site) -> None:
    good = site.html(
        "/kb/good", "Delivery times", "Orders arrive within three working days in the Benelux.",
        "Elsewhere in Europe a parcel takes five to seven working days, depending on the carrier and customs.",
        "You get a tracking link by email as soon as the parcel leaves our warehouse in Rotterdam.",
    )
    site.pages["/kb/moved"] = Page(status=302, headers={"Location": "/kb/good2"})
    moved_target = site.html("/kb/good2", "Gift cards", "Gift cards never expire and can be used online.")
    slow = site.html("/kb/slow", "Slow page", "Never read.", delay_s=3)
    loop = site.url("/kb/loop")
    site.pages["/kb/loop"] = Page(status=302, headers={"Location": "/kb/loop"})
    missing = site.url("/kb/missing")
    made = create(kb, knowledge_base_urls=[good, site.url("/kb/moved"), slow, missing, loop])
    done = settled(kb, made["knowledge_base_id"])
    by_url = {s["url"]: s for s in done["knowledge_base_sources"]}
    assert done["status"] == "complete"  # some sources failed, the rest is searchable
    assert by_url[good]["status"] == "complete" and by_url[good]["title"] == "Delivery times"
    assert by_url[site.url("/kb/moved")]["status"] == "complete"
    assert "within 1.5 s" in by_url[slow]["error_message"]
    assert "HTTP 404" in by_url[missing]["error_message"]
    assert "redirects" in by_url[loop]["error_message"]
    assert sorted(done["error_messages"]) == sorted(
        f"{s['source_id']}: {s['error_message']}" for s in done["knowledge_base_sources"] if s["status"] == "error")
    kb_id = made["knowledge_base_id"]
    hit = search(kb, kb_id, "how many working days do orders take")[0]
    assert hit["source_id"] == by_url[good]["source_id"] and "three working days" in hit["text"]
    assert search(kb, kb_id, "do gift cards expire")[0]["source_id"] == by_url[site.url("/kb/moved")]["source_id"]
    # Navigation, footer and scripts are not the page's text.
    source = by_url[good]["source_id"]
    chunks = kb.get(f"{BASE}/{kb_id}/sources/{source}/chunks").json()["data"]
    assert any("Rotterdam" in c["text"] for c in chunks)
    for text in ("SCRIPTTEXT", "Copyright footer", "About us"):
        assert all(text not in c["text"] for c in chunks)
    assert moved_target


def test_a_url_source_refreshed_by_hand_reindexes_only_what_changed(kb: Api, site: Site) -> None:
    url = site.html("/kb/faq", "FAQ", "The office cat is called Bartholomew.")
    made = create(kb, knowledge_base_urls=[url])
    kb_id = made["knowledge_base_id"]
    source = settled(kb, kb_id)["knowledge_base_sources"][0]
    chunks_path = f"{BASE}/{kb_id}/sources/{source['source_id']}/chunks"
    before = kb.get(chunks_path).json()["data"]
    refresh = f"{BASE}/{kb_id}/sources/{source['source_id']}/refresh"

    # The same page again: fetched, nothing re-indexed (the same chunk ids).
    hits = site.hits.get("/kb/faq", 0)
    assert kb.post(refresh).status_code == 200
    again = settled(kb, kb_id)
    assert site.hits["/kb/faq"] == hits + 1
    assert kb.get(chunks_path).json()["data"] == before
    assert again["last_refreshed_timestamp"] is not None

    # A changed page, slow to answer: the old text stays searchable meanwhile.
    hold = threading.Event()
    site.html("/kb/faq", "FAQ", "The office dog is called Wellington.", hold=hold)
    answered = kb.post(refresh)
    assert answered.json()["status"] == "refreshing_in_progress"
    try:
        assert search(kb, kb_id, "office cat name")[0]["source_id"] == source["source_id"]
        assert kb.get(f"{BASE}/{kb_id}").json()["status"] == "refreshing_in_progress"
    finally:
        hold.set()
    settled(kb, kb_id)
    assert search(kb, kb_id, "Bartholomew") == []
    assert "Wellington" in search(kb, kb_id, "office dog")[0]["text"]
    assert kb.get(chunks_path).json()["data"] != before


def test_refreshing_a_text_source_is_refused(kb: Api) -> None:
    made = create(kb, knowledge_base_texts=[{"title": "T", "text": "Words."}])
    source = made["knowledge_base_sources"][0]["source_id"]
    assert_error(kb.post(f"{BASE}/{made['knowledge_base_id']}/sources/{source}/refresh"), 409, "not_a_url_source")


def test_a_private_address_is_refused_unless_allowed(api: Api, site: Site) -> None:
    """The shared server keeps the default: URL sources reach public addresses only."""
    url = site.html("/kb/private", "Inside", "Secret internal text.")
    made = create(api, knowledge_base_urls=[url])
    done = settled(api, made["knowledge_base_id"])
    assert done["status"] == "error"  # its only source failed
    source = done["knowledge_base_sources"][0]
    assert source["status"] == "error" and "not a public address" in source["error_message"]
    assert "127.0.0.1" not in source["error_message"].replace(url, "")
    assert site.hits.get("/kb/private", 0) == 0


# --- adding and deleting ---------------------------------------------------------------


def test_add_and_delete_sources(kb: Api) -> None:
    made = create(kb, knowledge_base_texts=[{"title": "Parking", "text": "Parking is free in the garage on level minus two."}])
    kb_id = made["knowledge_base_id"]
    first = settled(kb, kb_id)
    added = kb.post(f"{BASE}/{kb_id}/sources", {"knowledge_base_texts": [
        {"title": "Lunch", "text": "The canteen serves lunch from twelve to two."}]})
    assert added.status_code == 200, added.text
    assert added.json()["status"] == "refreshing_in_progress"
    assert len(added.json()["knowledge_base_sources"]) == 2
    both = settled(kb, kb_id)
    assert both["status"] == "complete" and both["chunk_count"] > first["chunk_count"]
    lunch = both["knowledge_base_sources"][1]["source_id"]
    assert search(kb, kb_id, "canteen lunch")[0]["source_id"] == lunch

    deleted = kb.delete(f"{BASE}/{kb_id}/sources/{lunch}")
    assert deleted.status_code == 200
    assert [s["source_id"] for s in deleted.json()["knowledge_base_sources"]] == [first["knowledge_base_sources"][0]["source_id"]]
    assert deleted.json()["chunk_count"] == first["chunk_count"]
    assert search(kb, kb_id, "canteen lunch") == []
    assert search(kb, kb_id, "parking garage")[0]["score"] > 0
    assert_error(kb.delete(f"{BASE}/{kb_id}/sources/{lunch}"), 404, "source_not_found")

    # Files added by multipart.
    response = multipart(kb, f"{BASE}/{kb_id}/sources", {}, [("bikes.txt", b"Bicycles go in the shed.", "text/plain")])
    assert response.status_code == 200, response.text
    done = settled(kb, kb_id)
    assert search(kb, kb_id, "bicycle shed")[0]["source_id"] == done["knowledge_base_sources"][-1]["source_id"]


def test_a_source_that_fails_leaves_the_rest(kb: Api) -> None:
    broken = b"%PDF-1.4\n" + b"this is not really a pdf" * 20
    response = multipart(kb, BASE, {"knowledge_base_name": "Mixed",
                                    "knowledge_base_texts": [{"title": "Fine", "text": "The lift is out of order."}]},
                         [("broken.pdf", broken, "application/pdf")])
    assert response.status_code == 201, response.text
    done = settled(kb, response.json()["knowledge_base_id"])
    text, pdf = done["knowledge_base_sources"]
    assert text["status"] == "complete" and pdf["status"] == "error"
    assert "PDF" in pdf["error_message"] and done["status"] == "complete"
    assert done["error_messages"] == [f"{pdf['source_id']}: {pdf['error_message']}"]
    assert search(kb, done["knowledge_base_id"], "lift")[0]["source_id"] == text["source_id"]


def test_list_get_and_delete(kb: Api) -> None:
    ids = [create(kb, knowledge_base_name=f"kb {i}")["knowledge_base_id"] for i in range(3)]
    first = kb.get(BASE, limit=2).json()
    assert [b["knowledge_base_id"] for b in first["data"]] == ids[::-1][:2]
    rest = kb.get(BASE, limit=2, paginationKey=first["pagination_key"]).json()
    assert ids[0] in [b["knowledge_base_id"] for b in rest["data"]]
    assert kb.delete(f"{BASE}/{ids[0]}").status_code == 204
    assert_error(kb.get(f"{BASE}/{ids[0]}"), 404, "knowledge_base_not_found")
    assert_error(kb.delete(f"{BASE}/{ids[0]}"), 404, "knowledge_base_not_found")


def test_deleting_a_knowledge_base_takes_its_chunks(kb: Api) -> None:
    made = create(kb, knowledge_base_texts=[{"title": "Keys", "text": "Spare keys hang behind the reception desk."}])
    kb_id = made["knowledge_base_id"]
    source = settled(kb, kb_id)["knowledge_base_sources"][0]
    other = create(kb, knowledge_base_texts=[{"title": "Keys", "text": "Spare keys are with the caretaker."}])
    settled(kb, other["knowledge_base_id"])
    assert kb.delete(f"{BASE}/{kb_id}").status_code == 204
    assert_error(kb.get(f"{BASE}/{kb_id}/sources/{source['source_id']}/chunks"), 404)
    # The other knowledge base's counts and index are untouched.
    hits = search(kb, other["knowledge_base_id"], "spare keys")
    assert len(hits) == 1 and "caretaker" in hits[0]["text"]


# --- bad input -----------------------------------------------------------------------------


def test_another_workspaces_knowledge_base_is_not_found(kb: Api, kb_other: Api) -> None:
    made = create(kb, knowledge_base_texts=[{"title": "Mine", "text": "Only mine."}])
    kb_id = made["knowledge_base_id"]
    source = made["knowledge_base_sources"][0]["source_id"]
    for response in (
        kb_other.get(f"{BASE}/{kb_id}"),
        kb_other.delete(f"{BASE}/{kb_id}"),
        kb_other.post(f"{BASE}/{kb_id}/sources", {"knowledge_base_texts": [{"title": "x", "text": "y"}]}),
        kb_other.post(f"{BASE}/{kb_id}/search", {"query": "mine"}),
        kb_other.delete(f"{BASE}/{kb_id}/sources/{source}"),
        kb_other.get(f"{BASE}/{kb_id}/sources/{source}/chunks"),
        kb_other.get(f"{BASE}/{kb_id}/sources/{source}/content"),
        kb_other.post(f"{BASE}/{kb_id}/sources/{source}/refresh"),
    ):
        assert_error(response, 404, "knowledge_base_not_found")
    assert kb_other.get(BASE).json()["data"] == []
    # Naming a workspace that is not the key's.
    assert_error(kb.get(f"{BASE}/{kb_id}", workspaceId=kb_other.ws), 404)
    assert_error(kb.post(BASE, {"knowledge_base_name": "x", "workspaceId": kb_other.ws}), 404)
    assert_error(multipart(kb_other, BASE, {"knowledge_base_name": "x", "workspaceId": str(kb.ws)}, []), 404)
    # Another knowledge base's source through mine.
    theirs = create(kb_other, knowledge_base_texts=[{"title": "T", "text": "Theirs."}])
    assert_error(kb.get(f"{BASE}/{kb_id}/sources/{theirs['knowledge_base_sources'][0]['source_id']}/chunks"),
                 404, "source_not_found")


@pytest.mark.parametrize(("body", "field"), [
    ({"knowledge_base_name": "x" * 40}, "knowledge_base_name"),
    ({"knowledge_base_name": ""}, "knowledge_base_name"),
    ({"max_chunk_size": 500, "min_chunk_size": 500}, "min_chunk_size"),
    ({"max_chunk_size": 50}, "max_chunk_size"),
    ({"knowledge_base_texts": [{"title": "t"}]}, "knowledge_base_texts[0].text"),
    ({"knowledge_base_texts": [{"title": "t", "text": "x", "extra": 1}]}, "knowledge_base_texts[0].extra"),
    ({"knowledge_base_urls": ["ftp://example.com/x"]}, "knowledge_base_urls[0]"),
    ({"knowledge_base_urls": ["http://0177.0.0.1/"]}, "knowledge_base_urls[0]"),
    ({"enable_auto_refresh": "sometimes"}, "enable_auto_refresh"),
])
def test_bad_create_bodies(kb: Api, body: dict[str, Any], field: str) -> None:
    assert_error(kb.post(BASE, {"knowledge_base_name": "ok", **body}), 422, "validation_error", field)
    assert kb.get(BASE).json()["data"] == []


def test_bad_multipart_bodies_keep_nothing(kb: Api) -> None:
    def bad(fields: dict[str, Any], files: list[tuple[str, bytes, str]], status: int, field: str | None = None) -> None:
        response = multipart(kb, BASE, {"knowledge_base_name": "ok", **fields}, files)
        assert_error(response, status, field=field)

    bad({}, [("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")], 415)
    bad({}, [("fake.pdf", b"just text, not a pdf", "application/pdf")], 415)
    bad({}, [("big.txt", b"a" * (MAX_FILE + 1), "text/plain")], 413)
    bad({}, [(f"f{i}.txt", b"words", "text/plain") for i in range(5)], 422, "knowledge_base_files")
    bad({}, [("empty.txt", b"", "text/plain")], 422, "knowledge_base_files")
    bad({"knowledge_base_texts": "[{not json"}, [], 422, "knowledge_base_texts")
    bad({"knowledge_base_name": "a\x00b"}, [], 422, "knowledge_base_name")
    bad({"max_chunk_size": "lots"}, [], 422, "max_chunk_size")
    bad({"surprise": "field"}, [], 422, "surprise")
    # A file part under another name.
    response = kb.http.post(BASE, data={"workspaceId": str(kb.ws), "knowledge_base_name": "x"},
                            files=[("attachment", ("a.txt", b"x", "text/plain"))])
    assert_error(response, 422, field="attachment")
    # A body that is not multipart at all, though it says so.
    response = kb.http.post(BASE, content=b"--nothing\r\n", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert response.status_code in (400, 422), response.text
    assert kb.get(BASE).json()["data"] == []


def test_an_upload_larger_than_the_limit_is_refused_while_it_streams(kb: Api) -> None:
    """Past max_upload_bytes (2 MB here) in total, whatever each file's size."""
    files = [(f"f{i}.txt", b"word " * 120_000, "text/plain") for i in range(4)]  # 4 x 600 KB, each over MAX_FILE
    response = multipart(kb, BASE, {"knowledge_base_name": "big"}, files)
    assert_error(response, 413, "payload_too_large")
    # Streamed without a Content-Length: counted as it arrives.
    def body() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"workspaceId\"\r\n\r\n" + str(kb.ws).encode() + b"\r\n"
        yield b"--b\r\nContent-Disposition: form-data; name=\"knowledge_base_files\"; filename=\"x.txt\"\r\n\r\n"
        for _ in range(30):
            yield b"x" * 100_000
        yield b"\r\n--b--\r\n"
    response = kb.http.post(BASE, content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "payload_too_large")
    assert kb.get(BASE).json()["data"] == []


def test_other_content_types_are_refused(kb: Api) -> None:
    response = kb.http.post(BASE, content=b'{"knowledge_base_name": "x"}', headers={"content-type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")
    # What is neither JSON nor a form is refused before any route runs.
    response = kb.http.post(BASE, content=b"knowledge_base_name=x", headers={"content-type": "text/plain"})
    assert_error(response, 422, "validation_error", "body")
    # A url-encoded form is a form without files.
    response = kb.http.post(BASE, data={"workspaceId": str(kb.ws), "knowledge_base_name": "form"})
    assert response.status_code == 201 and response.json()["knowledge_base_name"] == "form"


@pytest.mark.parametrize("query", [
    '"unbalanced', "NEAR(a b", "a AND OR NOT b", "col : value", "'; DROP TABLE knowledge_chunks; --",
    "* ^ - + ()", "x" * 5000, "ünïcödé straße 東京", "!!!",
])
def test_search_takes_any_text(kb: Api, query: str) -> None:
    made = create(kb, knowledge_base_texts=[{"title": "Misc", "text": "Tables and columns; Tokyo 東京; near the station."}])
    settled(kb, made["knowledge_base_id"])
    hits = search(kb, made["knowledge_base_id"], query)
    assert all(0 < h["score"] <= 1 for h in hits)
    assert kb.post(f"{BASE}/{made['knowledge_base_id']}/search", {"query": "table"}).json()["chunks"]


def test_search_options(kb: Api) -> None:
    texts = [{"title": "Doc", "text": text} for text in (
        ["The blue widget is cheap."] * 2 + ["The blue widget is heavy."] * 2 + ["A red gadget."] * 4)]
    made = create(kb, knowledge_base_texts=texts)
    kb_id = made["knowledge_base_id"]
    settled(kb, kb_id)
    assert len(search(kb, kb_id, "blue widget", top_k=3)) == 3
    every = search(kb, kb_id, "cheap blue widget", top_k=8)
    strict = search(kb, kb_id, "cheap blue widget", top_k=8, filter_score=0.9)
    assert strict and len(strict) < len(every)
    assert all(h["score"] >= 0.9 for h in strict)
    # The chunks holding every word of the question come first.
    assert all("cheap" in h["text"] for h in every[:2]) and all("heavy" in h["text"] for h in every[2:4])
    assert_error(kb.post(f"{BASE}/{kb_id}/search", {"query": ""}), 422, field="query")
    assert_error(kb.post(f"{BASE}/{kb_id}/search", {"query": "x", "top_k": 0}), 422, field="top_k")
    assert_error(kb.post(f"{BASE}/{kb_id}/search", {"query": "x", "filter_score": 1.5}), 422, field="filter_score")
    assert_error(kb.post(f"{BASE}/{kb_id}/search", {"query": "x\u0000"}), 422)
