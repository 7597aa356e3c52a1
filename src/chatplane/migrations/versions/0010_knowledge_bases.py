"""knowledge bases: sources, chunks and the full-text index of each database

Revision ID: 0010
Revises: 0009

Chunks are indexed by their ``terms`` column (``chatplane.knowledge.terms``:
stemmed words the application makes, the same on both databases). The index
itself is each database's own and lives outside the ORM model (``env.py``
leaves it out of autogenerate's comparison):

- SQLite: an FTS5 table over the chunks (contentless, kept in step by
  triggers);
- PostgreSQL: a generated ``tsvector`` column (``simple`` configuration:
  the terms are stemmed already) with a GIN index.

Both index a chunk's term ``t`` of knowledge base ``knowledge_base_<ulid>``
as the one token ``k<key>t``, where the key is the last 10 characters of
the ULID (50 random bits): a search in a knowledge base reads the postings
of that knowledge base's terms and nothing else (with the knowledge base as
a column of its own, FTS5 walked every row of the knowledge base for each
query: 9 of 12 ms at 10k chunks; PostgreSQL's planner did the same). The
key is short so that a chunk's ``tsvector`` stays small (1,050 bytes a
chunk with the whole ULID, 700 with the key and stripped of positions,
which no ranking here uses): ranking 2,000 matches took 14 ms through the
index and 47 ms as PostgreSQL's planner chose, a table scan; 10 ms now, and
the planner picks the index. The ``k`` keeps a
token from parsing as a number on PostgreSQL. Two knowledge bases sharing a
key (one chance in 10^15 for a pair) would only share candidates, which the
search filters by knowledge base.
"""
from alembic import op
import sqlalchemy as sa
import chatplane.db


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# "k" + the key (the id's last 10 characters) before each term.
_SQLITE_TOKENS = "substr(replace(' ' || {row}.terms, ' ', ' k' || substr({row}.knowledge_base_id, -10)), 2)"
SQLITE_FTS = (
    """CREATE VIRTUAL TABLE knowledge_chunks_fts USING fts5(
        terms, content='', tokenize='unicode61 remove_diacritics 0')""",
    f"""CREATE TRIGGER knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN
        INSERT INTO knowledge_chunks_fts(rowid, terms) VALUES (new.id, {_SQLITE_TOKENS.format(row="new")});
    END""",
    f"""CREATE TRIGGER knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN
        INSERT INTO knowledge_chunks_fts(knowledge_chunks_fts, rowid, terms)
        VALUES ('delete', old.id, {_SQLITE_TOKENS.format(row="old")});
    END""",
)

POSTGRES_TSV = (
    "ALTER TABLE knowledge_chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS "
    "(strip(to_tsvector('simple', replace(' ' || terms, ' ', ' k' || right(knowledge_base_id, 10))))) STORED"
)


def upgrade() -> None:
    op.create_table('knowledge_bases',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('max_chunk_size', sa.Integer(), nullable=False),
    sa.Column('min_chunk_size', sa.Integer(), nullable=False),
    sa.Column('enable_auto_refresh', sa.Boolean(), nullable=False),
    sa.Column('chunk_count', sa.Integer(), nullable=False),
    sa.Column('term_count', sa.Integer(), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_refreshed_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_knowledge_bases_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_knowledge_bases'))
    )
    with op.batch_alter_table('knowledge_bases', schema=None) as batch_op:
        batch_op.create_index('ix_knowledge_bases_workspace_id', ['workspace_id', 'id'], unique=False)

    op.create_table('knowledge_sources',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('knowledge_base_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('title', sa.String(length=512), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=True),
    sa.Column('filename', sa.String(length=512), nullable=True),
    sa.Column('content_type', sa.String(length=255), nullable=True),
    sa.Column('file_size', sa.Integer(), nullable=False),
    sa.Column('original', sa.LargeBinary(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('chunk_count', sa.Integer(), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('indexed_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('refreshed_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['knowledge_base_id'], ['knowledge_bases.id'], name=op.f('fk_knowledge_sources_knowledge_base_id_knowledge_bases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_knowledge_sources'))
    )
    with op.batch_alter_table('knowledge_sources', schema=None) as batch_op:
        batch_op.create_index('ix_knowledge_sources_base', ['knowledge_base_id', 'id'], unique=False)

    op.create_table('knowledge_terms',
    sa.Column('knowledge_base_id', sa.String(length=64), nullable=False),
    sa.Column('term', sa.String(length=64), nullable=False),
    sa.Column('chunks', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['knowledge_base_id'], ['knowledge_bases.id'], name=op.f('fk_knowledge_terms_knowledge_base_id_knowledge_bases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('knowledge_base_id', 'term', name=op.f('pk_knowledge_terms'))
    )
    op.create_table('knowledge_chunks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('knowledge_base_id', sa.String(length=64), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('terms', sa.Text(), nullable=False),
    sa.Column('term_count', sa.Integer(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=True),
    sa.Column('embedding_model', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['source_id'], ['knowledge_sources.id'], name=op.f('fk_knowledge_chunks_source_id_knowledge_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_knowledge_chunks'))
    )
    with op.batch_alter_table('knowledge_chunks', schema=None) as batch_op:
        batch_op.create_index('ix_knowledge_chunks_base', ['knowledge_base_id'], unique=False)
        batch_op.create_index('ix_knowledge_chunks_source', ['source_id', 'position'], unique=False)

    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    else:
        op.execute(POSTGRES_TSV)
        op.execute("CREATE INDEX ix_knowledge_chunks_tsv ON knowledge_chunks USING gin (tsv)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("knowledge_chunks_ai", "knowledge_chunks_ad"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS knowledge_chunks_fts")
    with op.batch_alter_table('knowledge_chunks', schema=None) as batch_op:
        batch_op.drop_index('ix_knowledge_chunks_source')
        batch_op.drop_index('ix_knowledge_chunks_base')

    op.drop_table('knowledge_chunks')
    op.drop_table('knowledge_terms')
    with op.batch_alter_table('knowledge_sources', schema=None) as batch_op:
        batch_op.drop_index('ix_knowledge_sources_base')

    op.drop_table('knowledge_sources')
    with op.batch_alter_table('knowledge_bases', schema=None) as batch_op:
        batch_op.drop_index('ix_knowledge_bases_workspace_id')

    op.drop_table('knowledge_bases')
