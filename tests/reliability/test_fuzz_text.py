"""Hostile values through every route of the OpenAPI document, then everything read back.

Each operation gets requests that schemathesis generates as valid (so they
reach the code behind the route, with the tenant's real ids), in which
Hypothesis then swaps some strings, numbers and dictionary keys for hostile
ones of a known class:

- ``surrogate``: lone UTF-16 surrogates (valid JSON escapes, invalid
  Unicode), alone or inside whole-Unicode text;
- ``nul``: U+0000;
- ``rtl``: bidirectional controls and right-to-left text;
- ``emoji``: joined sequences, flags, astral characters;
- ``whole-unicode``: strings drawn from every Unicode scalar value (all but
  NUL: controls, private use, unassigned, noncharacters);
- ``injection``: SQL, template, path, format-string and header injection;
- ``1mb``: strings of a megabyte (bodies only; the whole body then nears or
  passes the 1 MiB limit);
- ``deep-json``: arrays nested 65, 200 and 10,000 levels deep;
- ``extreme-number``: beyond 64 bits, the float limits, NaN and infinities;
- ``extreme-date``: timestamps before 1970, at year 1 and 9999, and dates
  with far offsets, as numbers and as strings.

Values are sent as an attacker sends them: JSON with ``\\uD800`` escapes,
query and path parameters percent-encoded from their UTF-8 bytes (a
surrogate as the bytes CESU-8 would give it).

The properties, per request: never a 5xx; every answer is JSON in the one
error shape or a body that holds only valid text; a request that carries a
surrogate or a NUL never succeeds (refused before anything is stored). After
each successful write the thing written is read back through its get route,
so bad data one call wrote is read by the next; at the end
``test_everything_written_reads_back`` walks every list of the workspace to
its last page, gets every item, every version listing, the ``/v3/list-chats``
pages and the webhook delivery log, and scans every table as ``chatplane
repair --dry-run`` does: nothing bad stored.

CI runs the bounded form (``EXAMPLES`` requests per operation, derandomized
so every run sends the same ones, at most ``BUDGET_S`` seconds per
operation); the long form is one command away::

    CHATPLANE_FUZZ_LONG=1 .venv/bin/pytest tests/reliability/test_fuzz_text.py -s

(500 requests per operation, a new random seed each run, 120 s per
operation; ``CHATPLANE_FUZZ_EXAMPLES`` and ``CHATPLANE_FUZZ_BUDGET_S`` set
either by hand). ``-s`` prints the counts.

Why not schemathesis' own stateful mode: it follows OpenAPI links, and our
document has none yet (FastAPI does not emit them); reading back each write
by the id its answer names does the same job for these properties.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from chatplane.db import create_engine
from chatplane.repair import repair
from chatplane.testing import ScriptedModel
from chatplane.text import bad_text
from tests.conftest import BACKENDS
from tests.reliability.world import OPERATIONS, World, served_world

pytestmark = pytest.mark.reliability

LONG = os.environ.get("CHATPLANE_FUZZ_LONG") == "1"
EXAMPLES = int(os.environ.get("CHATPLANE_FUZZ_EXAMPLES", "500" if LONG else "40"))
BUDGET_S = float(os.environ.get("CHATPLANE_FUZZ_BUDGET_S", "120" if LONG else "3"))
CLASSES = ["surrogate", "nul", "rtl", "emoji", "whole-unicode", "injection", "1mb", "deep-json",
           "extreme-number", "extreme-date"]
NEVER_STORED = {"surrogate", "nul"}
# Keys the hostile values leave alone: without the tenant's workspace a
# request stops at the key check and reaches nothing.
KEPT = {"workspaceId"}

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
# Every Unicode scalar value but NUL (Hypothesis leaves surrogates out; they are a class of their own).
ANY_CHARACTER = st.characters(codec=None, exclude_categories=(), exclude_characters="\x00")


def _class(name: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, Any]]:
    return values.map(lambda value: (name, value))


def _deep(levels: int) -> str:
    """A placeholder that ``_dumps`` turns into arrays nested ``levels`` deep
    (json.dumps itself cannot write 10,000 levels)."""
    return f"\x01deep:{levels}\x01"


def _dumps(body: Any) -> bytes:
    text = json.dumps(body, ensure_ascii=True, allow_nan=True)  # NaN, Infinity: as a careless client writes them
    for levels in (65, 200, 10_000):
        text = text.replace(json.dumps(_deep(levels)), "[" * levels + "]" * levels)
    return text.encode()


TEXT = st.one_of(
    _class("surrogate", st.one_of(
        st.sampled_from(["\ud800", "a\udc00b", "\udfff\ud800", "\U0001f600\udbff"]),
        st.tuples(st.text(ANY_CHARACTER, max_size=20), SURROGATE, st.text(ANY_CHARACTER, max_size=20)).map("".join),
    )),
    _class("nul", st.sampled_from(["\x00", "a\x00b", "\x00" * 8])),
    _class("rtl", st.sampled_from(["\u202eevil\u202c", "\u200f\u05e9\u05dc\u05d5\u05dd\u200e",
                                   "\u2067\u0645\u0631\u062d\u0628\u0627\u2069", "\u061c1\u200f2"])),
    _class("emoji", st.sampled_from(["\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
                                     "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f1fa\U0001f1f8" * 20,
                                     "\U0010ffff\U000e0001"])),
    _class("whole-unicode", st.text(ANY_CHARACTER, min_size=1, max_size=40)),
    _class("injection", st.sampled_from([
        "' OR '1'='1", "\"; DROP TABLE chats; --", "{{customer_name}}", "{{", "}}{{", "${jndi:ldap://x/a}",
        "<script>alert(1)</script>", "../../../etc/passwd", "%s%s%n%x", "\r\nX-Injected: 1", "%00", "\\",
        "*/--", "$where", "__proto__", "constructor",
    ])),
)
NUMBER = _class("extreme-number", st.sampled_from([
    2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 1.7976931348623157e308, -1.7976931348623157e308, 5e-324,
    -0.0, float("nan"), float("inf"), float("-inf"), -1, 0,
]))
DATE = _class("extreme-date", st.sampled_from([
    -62135596800000, -1, -86400000, 253402300799999, 2**53, 8.64e15,
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00", "1969-12-31T23:59:59Z", "1970-01-01T00:00:00-23:59",
    "10000-01-01", "not a date",
]))
DEEP = _class("deep-json", st.sampled_from([65, 200, 10_000]).map(_deep))
MEGABYTE = _class("1mb", st.sampled_from(["x" * 1_000_000, "\u05e9" * 400_000]))
# A body's leaf: mostly text, now and then a number, a date, a nest, a megabyte.
BODY_VALUE = st.integers(0, 39).flatmap(
    lambda n: MEGABYTE if n == 0 else DEEP if n < 3 else NUMBER if n < 9 else DATE if n < 13 else TEXT
)
PARAMETER_VALUE = st.integers(0, 9).flatmap(lambda n: NUMBER if n == 0 else DATE if n == 1 else TEXT)


def _encoded(value: Any) -> str:
    """A query or path value as the bytes an attacker sends (a surrogate as
    its CESU-8 bytes, which are not UTF-8), percent-encoded."""
    text = value if isinstance(value, str) else json.dumps(value)
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _clean_text(node: Any) -> str | None:
    """Where ``node`` (an answer's JSON) holds a string chatplane should never give out, or None."""
    if isinstance(node, str):
        return None if bad_text(node) is None else repr(node[:80])
    if isinstance(node, list):
        return next((found for item in node if (found := _clean_text(item))), None)
    if isinstance(node, dict):
        for key, item in node.items():
            if bad_text(key) is not None:
                return repr(key[:80])
            if found := _clean_text(item):
                return found
    return None


def assert_readable(response: Any, what: str) -> None:
    """``response`` is no 5xx, and its body (JSON or an event stream) holds only valid text."""
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code == 204 or not response.content:
        return
    kind = response.headers.get("content-type", "")
    if response.status_code == 200 and response.headers.get("content-disposition", "").startswith("attachment"):
        return  # a knowledge source's original, served back byte for byte as it was given: a download
    if kind.startswith("text/event-stream"):
        documents = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    else:
        assert kind.startswith("application/json"), f"{what}: {kind}"
        documents = [response.content]
    for document in documents:
        parsed = json.loads(document)  # strict: invalid UTF-8 raises
        if response.status_code >= 400:
            assert set(parsed) == {"error"} and parsed["error"]["message"], f"{what}: {parsed}"
        found = _clean_text(parsed)
        assert found is None, f"{what}: answered {found}"


def _slots(node: Any, where: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """Where a hostile value can go in ``node``: each leaf, and a new key in each object."""
    if isinstance(node, dict):
        if where not in {("path",), ("body",)}:  # a path has only its parameters; a body's top is strict
            yield (*where, KEY)
        for key, value in node.items():
            if key not in KEPT:
                yield from _slots(value, (*where, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _slots(item, (*where, index))
    else:
        yield where


IDS = {"agent_id", "llm_id", "override_agent_id", "from_number", "to_number", "agentId", "chatId"}
KEY = object()  # in a slot: a new key of that object (free-form objects keep their keys)


class Fuzzer:
    """Puts one or two hostile values into a generated request, drawn
    through Hypothesis (so a failure shrinks to the smallest request that
    shows it); the rest of the request stays as generated, so it gets as far
    as a valid one would."""

    def __init__(self, data: st.DataObject, parts: dict[str, Any]) -> None:
        self.classes: Counter[str] = Counter()
        self.parts = parts
        slots = [slot for part, value in parts.items() if value for slot in _slots(value, (part,))]
        # Most requests keep their ids (a hostile id is a 404 or 422 and reaches
        # nothing behind it); one in eight puts the hostile values in ids only.
        # A request with nothing but ids (publish, end, delete, get) is sent as
        # generated half the time: it then works on what hostile requests
        # before it stored (publishes that agent, analyses that chat,
        # redelivers that payload).
        ids = [slot for slot in slots if slot[0] == "path" or slot[-1] in IDS]
        others = [slot for slot in slots if slot not in ids]
        if not others and data.draw(st.booleans()):
            return
        slots = ids if not others or (ids and data.draw(st.integers(0, 7)) == 0) else others
        if not slots:
            return
        chosen = data.draw(st.lists(st.sampled_from(range(len(slots))), min_size=1, max_size=2, unique=True))
        for index in chosen:
            *place, last = slots[index]
            node = self.parts
            for step in place:
                node = node[step]
            body = place[0] == "body"
            value = self._draw(data, BODY_VALUE if body else PARAMETER_VALUE)
            if last is KEY:
                node[self._draw(data, TEXT)] = value
            else:
                node[last] = value

    def _draw(self, data: st.DataObject, strategy: st.SearchStrategy[tuple[str, Any]]) -> Any:
        name, value = data.draw(strategy)
        self.classes[name] += 1
        return value


# "METHOD /path" -> how to find the get route of what a 2xx answer names.
def _read_back_path(answer: Any) -> list[str]:
    if not isinstance(answer, dict):
        return []
    paths = []
    for key, route in (("llm_id", "/api/llms/"), ("agent_id", "/api/chat-agents/"), ("chatId", "/api/chats/"),
                       ("chat_id", "/api/chats/"), ("phone_number", "/api/phone-numbers/")):
        if isinstance(answer.get(key), str):
            paths.append(route + _encoded(answer[key]))
    return paths


@dataclass
class Run:
    """The tenant under fuzzing and what was sent to it."""

    world: World
    sent: Counter[str] = field(default_factory=Counter)  # hostile class -> values sent
    stored: Counter[str] = field(default_factory=Counter)  # hostile class -> writes that succeeded with it
    reads: int = 0  # reads back

    def get(self, path: str, **query: Any) -> Any:
        world = self.world
        response = world.session.get(world.backend.url + path, params={"workspaceId": world.api.ws, **query},
                                     headers={"Authorization": f"Bearer {world.api.key}"}, timeout=60)
        self.reads += 1
        assert_readable(response, f"GET {path}")
        return response


@pytest.fixture(scope="module", params=BACKENDS)
def run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scripted_model: ScriptedModel
) -> Iterator[Run]:
    # The generated requests themselves are valid text: the hostile values are ours, one or two at a time.
    with served_world(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}"), scripted_model,
                      checks=[], generation={"allow-x00": False, "codec": "utf-8"}) as world:
        yield Run(world)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operation(run: Run, operation: str) -> None:
    world = run.world
    method, path = operation.split(" ", 1)
    strategy = world.schema[path][method].as_strategy(GenerationMode.POSITIVE)
    stop_at = time.monotonic() + BUDGET_S

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG, print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, data=st.data())
    def send(case: Any, data: st.DataObject) -> None:
        body = case.body if isinstance(case.body, dict | list) else None  # schemathesis' NOT_SET otherwise
        json_body = case.media_type == "application/json"
        fuzz = Fuzzer(data, copy.deepcopy({
            "path": case.path_parameters or None, "query": case.query or None,
            "body": body if json_body else None,
            "form": body if not json_body else None,  # Twilio's webhook
        }))
        parts = fuzz.parts
        url = world.backend.url + path.format(**{
            name: _encoded(value) for name, value in (parts["path"] or {}).items()
        })
        query = "&".join(f"{_encoded(key)}={_encoded(value)}" for key, value in (parts["query"] or {}).items())
        headers = {**dict(case.headers or {}), "Authorization": f"Bearer {world.api.key}"}
        content = None
        if parts["body"] is not None:
            content = _dumps(parts["body"])
            headers["Content-Type"] = "application/json"
        elif parts["form"] is not None:
            content = "&".join(f"{_encoded(key)}={_encoded(value)}" for key, value in parts["form"].items()).encode()
            headers["Content-Type"] = case.media_type
        if time.monotonic() > stop_at:
            return  # the operation's budget is spent: the remaining examples are drawn, not sent
        response = world.session.request(method, url + ("?" + query if query else ""), data=content,
                                         headers=headers, timeout=60)
        run.sent.update(fuzz.classes)
        world.statuses[(operation, response.status_code)] += 1
        what = f"{operation} carrying {dict(fuzz.classes)}"
        assert_readable(response, what)
        if 200 <= response.status_code < 300:
            assert not NEVER_STORED & set(fuzz.classes), f"{what}: accepted {response.status_code}"
            if method != "GET":
                run.stored.update(set(fuzz.classes))
                if response.content and "json" in response.headers.get("content-type", ""):
                    for read_path in _read_back_path(response.json()):
                        run.get(read_path)

    send()


def _walk(run: Run, path: str) -> list[dict[str, Any]]:
    """Every item of a list route, page after page."""
    items: list[dict[str, Any]] = []
    key = None
    while True:
        page = run.get(path, limit=100, **({"paginationKey": key} if key else {})).json()
        items += page["data"]
        key = page.get("pagination_key")
        if not key:
            return items


def test_everything_written_reads_back(run: Run) -> None:
    """After every test_operation on this database: every list to its last
    page, every item by its get route, every version listing, every page of
    ``/v3/list-chats`` and the webhook log, all answered and valid text."""
    world = run.world
    for path, key, extra in (("/api/llms", "llm_id", "/versions"), ("/api/chat-agents", "agent_id", "/versions"),
                             ("/api/phone-numbers", "phone_number", None), ("/api/chats", "chatId", None),
                             ("/api/webhook-deliveries", "id", None)):
        for item in _walk(run, path):
            ident = _encoded(str(item[key]))
            run.get(f"{path}/{ident}")
            if extra:
                run.get(f"{path}/{ident}{extra}")
    run.get("/api/workspaces")
    body: dict[str, Any] = {"workspaceId": world.api.ws, "limit": 100}
    while True:
        response = world.session.post(world.backend.url + "/v3/list-chats", json=body,
                                      headers={"Authorization": f"Bearer {world.api.key}"}, timeout=60)
        assert response.status_code == 200, response.text
        assert_readable(response, "POST /v3/list-chats")
        run.reads += 1
        if not response.json()["has_more"]:
            break
        body["pagination_key"] = response.json()["pagination_key"]

    # And in the database itself: nothing that `chatplane repair` would rewrite.
    async def scan() -> list[str]:
        engine = create_engine(world.backend.settings, pooled=False)
        try:
            return (await repair(engine, dry_run=True)).lines()
        finally:
            await engine.dispose()

    found = asyncio.run(scan())
    assert found[0].endswith("nothing to repair"), found

    statuses: Counter[int] = Counter()
    for (_, status), count in world.statuses.items():
        statuses[status] += count
    print(f"\n{world.backend.kind}: {sum(statuses.values())} fuzzed requests, {run.reads} reads back; "
          f"statuses {dict(sorted(statuses.items()))}")
    print(f"  hostile values sent, by class: {dict(run.sent)}")
    print(f"  successful writes carrying each class: {dict(run.stored)}")
    print(f"  chatplane repair --dry-run: {found[0]}")
    assert set(run.sent) == set(CLASSES), set(CLASSES) - set(run.sent)
    assert {operation for operation, _ in world.statuses} == set(OPERATIONS)
    # Valid text must get through, not only be refused: each such class was stored somewhere.
    assert {"rtl", "emoji", "whole-unicode", "injection"} <= set(run.stored), run.stored
