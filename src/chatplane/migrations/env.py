"""Alembic environment: one history for SQLite and PostgreSQL.

Settings come from the Config's attributes when chatplane drives Alembic
(``chatplane migrate``, ``serve``, the tests) and from the environment when a
developer runs ``alembic`` by hand.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from chatplane.db import create_engine
from chatplane.models import Base
from chatplane.settings import Settings

config = context.config
settings: Settings = config.attributes.get("settings") or Settings()


def _outside_model(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001
    """What autogenerate compares: not the full-text index of the chunks, which
    each database keeps in its own way outside the model (migration 0010)."""
    if type_ == "table" and name and name.startswith("knowledge_chunks_fts"):
        return False
    if type_ == "column" and name == "tsv" and obj.table.name == "knowledge_chunks":
        return False
    if type_ == "index" and name == "ix_knowledge_chunks_tsv":
        return False
    return True


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
        include_object=_outside_model,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(settings, pooled=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=settings.resolved_database_url, target_metadata=Base.metadata,
                      render_as_batch=True, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())
