"""The one Alembic history, run from empty on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from chatplane.db import alembic_config, create_engine, migrate
from chatplane.models import Base
from tests.conftest import BACKENDS, dispose_settings, fresh_settings


async def _tables(settings) -> set[str]:
    engine = create_engine(settings, pooled=False)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", BACKENDS)
def test_upgrade_from_empty_check_downgrade_and_upgrade_again(kind: str, tmp_path: Path) -> None:
    import asyncio

    settings = fresh_settings(kind, tmp_path)
    try:
        config = alembic_config(settings)
        migrate(settings)
        assert set(Base.metadata.tables) <= asyncio.run(_tables(settings))
        # Models and migrations agree: autogenerate finds nothing to add.
        command.check(config)
        command.downgrade(config, "base")
        assert asyncio.run(_tables(settings)) <= {"alembic_version"}
        migrate(settings)
        command.check(config)
    finally:
        dispose_settings(settings)


def test_history_is_linear() -> None:
    from chatplane.settings import Settings

    script = ScriptDirectory.from_config(alembic_config(Settings()))
    assert len(script.get_heads()) == 1
