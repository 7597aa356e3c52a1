"""Schemathesis against the real app's own /openapi.json, on both databases.

Every operation of the document gets generated requests, valid and invalid
ones (schemathesis' positive and negative modes), with a valid key. The
checks: no 5xx, ever, and every response is one the document describes: its
status code, its content type and its body's schema.

A request is only worth sending if it reaches the code behind the route, so
most name real things: the tenant starts with LLMs, agents, chats (ongoing
and ended), phone numbers and webhook deliveries, and schema hooks put their
ids into the generated paths, queries and bodies, and the tenant's
``workspaceId`` everywhere. Operations that use things up (delete, end) get
ids of their own, so the rest of the run still finds live ones.
``test_the_run_reached_real_resources`` then checks that the run was as big
as intended and that every operation succeeded some of the time.

Schemathesis is driven through ``APIOperation.as_strategy`` and Hypothesis,
not its pytest plugin: the plugin's ``from_fixture`` (the only way to load a
schema from a server that a fixture starts) does not run on pytest 9.2
(schemathesis 4.32 reads ``request.node._nodeid``, which pytest 9.2 removed).

The server runs without a job worker: generated agents carry generated
webhook URLs, generated numbers generated Twilio credentials, and this test
must not send webhooks or texts to anyone.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from chatplane.testing import ScriptedModel
from tests.conftest import BACKENDS
from tests.reliability.world import OPERATIONS, World, served_world

pytestmark = pytest.mark.reliability

# Requests per operation (fewer where there are not that many different
# ones). Most are valid: invalid ones mostly stop at validation (a 422), and
# cost four times as much to generate. The environment variable can raise
# it; the run must still make MIN_REQUESTS per database.
POSITIVE_EXAMPLES = int(os.environ.get("CHATPLANE_SCHEMATHESIS_EXAMPLES", 64))
NEGATIVE_EXAMPLES = POSITIVE_EXAMPLES // 4
MIN_REQUESTS = 2_500
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scripted_model: ScriptedModel
) -> Iterator[World]:
    with served_world(request.param, tmp_path_factory.mktemp(f"schemathesis-{request.param}"),
                      scripted_model, checks=CHECKS) as world:
        yield world


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operation(world: World, operation: str) -> None:
    method, path = operation.split(" ", 1)
    schema_operation = world.schema[path][method]
    budgets = {GenerationMode.POSITIVE: POSITIVE_EXAMPLES, GenerationMode.NEGATIVE: NEGATIVE_EXAMPLES}
    for mode, examples in budgets.items():

        @settings(
            max_examples=examples, deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=schema_operation.as_strategy(mode))
        def send(case: schemathesis.Case) -> None:
            response = case.call_and_validate(session=world.session)
            world.statuses[(operation, response.status_code)] += 1

        try:
            send()
        except Unsatisfiable:
            # Only when no request can be invalid: no parameters or body, or
            # only a path parameter that takes any string.
            assert mode is GenerationMode.NEGATIVE
            assert not schema_operation.body and not any(schema_operation.query)


def test_the_run_reached_real_resources(world: World) -> None:
    """After every test_operation on this database: the run was as big as
    intended, and every operation answered success some of the time, so
    requests got past the lookups and the validation to the work."""
    by_operation: dict[str, Counter] = defaultdict(Counter)
    for (operation, status), count in world.statuses.items():
        by_operation[operation][status] += count
    total = sum(world.statuses.values())
    print(f"\n{world.backend.kind}: {total} requests")
    for operation, statuses in by_operation.items():
        print(f"  {operation}: {dict(sorted(statuses.items()))}")
    assert total >= MIN_REQUESTS
    assert set(by_operation) == set(OPERATIONS)
    never_succeeded = [op for op, statuses in by_operation.items() if not any(200 <= s < 300 for s in statuses)]
    # Twilio's webhook takes only what Twilio signed (tests/test_sms.py signs it).
    assert never_succeeded == ["POST /webhooks/twilio/sms"]
