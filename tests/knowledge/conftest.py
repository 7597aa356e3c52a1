"""The knowledge tests' server: URL sources may be on loopback (the test
site), with small limits to test against; one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chatplane.settings import KnowledgeSettings
from tests.conftest import BACKENDS, Api, Backend, scripted_providers, served, tenant
from tests.knowledge.pages import Site

MAX_FILE = 300_000


@pytest.fixture(scope="module", params=BACKENDS)
def kb_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scripted_model) -> Iterator[Backend]:
    """A server whose URL sources may be on loopback (the test site), with small limits to test against."""
    limits = KnowledgeSettings(max_file_bytes=MAX_FILE, max_upload_bytes=2_000_000, max_files=4, fetch_timeout_s=1.5,
                               max_redirects=2)
    with served(request.param, tmp_path_factory.mktemp(f"kb-{request.param}"), allow_private_networks=True,
                knowledge=limits, providers=scripted_providers(scripted_model)) as backend:
        yield backend


@pytest.fixture
def kb(kb_backend: Backend) -> Iterator[Api]:
    with tenant(kb_backend, "kb") as client:
        yield client


@pytest.fixture
def kb_other(kb_backend: Backend) -> Iterator[Api]:
    with tenant(kb_backend, "kb-other") as client:
        yield client


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site() as s:
        yield s
