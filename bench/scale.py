"""Scale on PostgreSQL: chat lists and a long chat over a million chats.

    .venv/bin/python bench/scale.py [--chats N] [--requests N] [--keep]

1. Makes a fresh database on 127.0.0.1:5432 (trust auth, user postgres) and
   migrates it with the real Alembic history (``chatplane migrate``).
2. Generates the data with SQL inside PostgreSQL (``generate_series``):
   4 workspaces, 20 chat agents (1-3 published versions each, each on its own
   LLM), 1,000,000 chats over 90 days, with the columns the API fills (status,
   type, SMS numbers, metadata, dynamic variables, cost, analysis, message
   counts and times), the messages of every fifth chat, and one chat of 1,000
   messages. Then VACUUM ANALYZE, the state autovacuum keeps a live table in.
3. Serves the database with ``chatplane serve`` (one process, job worker on)
   and measures, one request at a time over a keep-alive connection:
   ``POST /v3/list-chats`` filtered on agent, status and a start-time range,
   without and with ``include_total``, five pages deep with
   ``pagination_key``; and ``GET /api/chats/{id}`` of the 1,000-message chat:
   p50/p99, and the CPU each request cost the server and its PostgreSQL
   backends (what the machine's load moves least).
4. Drops the database (unless ``--keep``).

Prints its figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from harness import wait_up  # bench/ is on sys.path when a bench script runs
from ulid import ULID

from chatplane.agents.schemas import ChatAgentConfig
from chatplane.llms.schemas import LlmConfig

KEY = "bench-key-0123456789abcdef"
MODEL = "gpt-4.1-mini"
INPUT_PRICE, OUTPUT_PRICE = 0.4e-6, 1.6e-6  # USD per token, as the provider entry below says
DAY_MS = 86_400_000
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # ULID's alphabet, lower case as chatplane.ids writes it
WORKSPACES = ["default", "acme", "globex", "initech"]
# Agents per workspace and each workspace's share of the chats.
AGENTS_PER_WORKSPACE = [12, 4, 2, 2]
WORKSPACE_SHARE = [0.7, 0.15, 0.1, 0.05]
SILENCES_MS = [3_600_000, 21_600_000, 86_400_000, 259_200_000]
MESSAGE_STEP_MS = 20_000
BIG_CHAT_MESSAGES = 1000
LIST_TARGET_MS, GET_TARGET_MS = 50.0, 20.0


# --- the data ------------------------------------------------------------------


def _ulid_sql(prefix: str, ms: str) -> str:
    """SQL for ``prefix_<ulid>`` of the millisecond ``ms``: as ``chatplane.ids.new_id`` mints them."""
    time_part = [f"substr('{CROCKFORD}', (({ms} >> {45 - 5 * i}) & 31)::int + 1, 1)" for i in range(10)]
    random_part = [f"substr('{CROCKFORD}', floor(random() * 32)::int + 1, 1)" for _ in range(16)]
    return " || ".join([f"'{prefix}_'", *time_part, *random_part])


def _iso_sql(ts: str) -> str:
    return f"to_char({ts} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def _at_sql(ms: str) -> str:
    return f"to_timestamp(({ms})::float8 / 1000)"


@dataclass(frozen=True, slots=True)
class Agent:
    index: int
    workspace_id: int
    agent_id: str
    llm_id: str
    versions: int
    silence_ms: int
    share: float
    number: str  # the SMS number it texts from


def _configs(agent: Agent, version: int) -> tuple[dict, dict]:
    """The stored LLM and agent configurations of one version, through the API's own schemas."""
    llm = LlmConfig(
        display_name=f"support-{agent.index}",
        model=MODEL,
        model_temperature=0.2,
        general_prompt=(
            "You are Ava, the support assistant of {{company}}. You help {{customer_name}} (plan: "
            "{{plan}}) with orders, refunds and account questions. Be brief and friendly. "
            f"Policy revision {version}: refunds within 30 days; escalate anything legal."
        ),
        begin_message="Hi {{customer_name}}! How can I help you today?",
        general_tools=[
            {"type": "end_chat", "name": "end_chat", "description": "End the chat when the user is done."},
            {"type": "custom", "name": "lookup_order", "description": "Look an order up by its id.",
             "url": "https://api.example.com/orders", "method": "POST",
             "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                            "required": ["order_id"]}},
            {"type": "extract_dynamic_variable", "name": "save_email", "description": "Keep the user's email.",
             "variables": [{"type": "string", "name": "email", "description": "The user's email address."}]},
        ],
        default_dynamic_variables={"company": "Acme", "customer_name": "there", "plan": "basic"},
    ).model_dump(mode="json")
    chat_agent = ChatAgentConfig(
        agent_name=f"Support {agent.index}",
        response_engine={"type": "uponai-llm", "llm_id": agent.llm_id, "version": version},
        end_chat_after_silence_ms=agent.silence_ms,
        auto_close_message="Closing this chat for now; write again any time.",
        post_chat_analysis_data=[
            {"type": "enum", "name": "topic", "description": "What the chat was about.",
             "choices": ["order", "refund", "account", "other"]},
            {"type": "boolean", "name": "resolved", "description": "Whether the issue was resolved."},
            {"type": "number", "name": "order_value", "description": "The order's value in USD, if any."},
        ],
        uponai_dynamic_variables={"company": "Acme Inc."},
    ).model_dump(mode="json")
    return llm, chat_agent


def _make_agents(t0: datetime) -> list[Agent]:
    """Workspace ids are 1..4: the order ``generate`` creates them in on an empty database."""
    agents = []
    for workspace, (count, share) in enumerate(zip(AGENTS_PER_WORKSPACE, WORKSPACE_SHARE, strict=True), start=1):
        # A few busy agents and a long tail (Zipf).
        weights = [1 / (k + 1) for k in range(count)]
        for k in range(count):
            index = len(agents)
            created = (t0 - timedelta(days=10) + timedelta(minutes=index)).timestamp()
            agents.append(Agent(
                index=index, workspace_id=workspace,
                agent_id=f"chat_agent_{str(ULID.from_timestamp(created)).lower()}",
                llm_id=f"llm_{str(ULID.from_timestamp(created)).lower()}",
                versions=1 + index % 3, silence_ms=SILENCES_MS[index % 4],
                share=share * weights[k] / sum(weights), number=f"+1415555{index:04d}",
            ))
    return agents


CHATS_SQL = """
WITH base AS (
    SELECT g,
           $2::bigint + g::bigint * $3::bigint / $1 + floor(random() * ($3::bigint / $1))::bigint AS ms,
           width_bucket(random(), $4::float8[]) AS a,
           random() AS r_type, random() AS r_store, random() AS r_turns, random() AS r_end,
           random() AS r_meta, random() AS r_analysis, random() AS r_sentiment
    FROM generate_series(0, $1 - 1) AS g
), shaped AS (
    SELECT b.*,
           ($5::text[])[a] AS agent_id, ($6::int[])[a] AS workspace_id, ($7::text[])[a] AS llm_id,
           least(($8::int[])[a], 1 + floor(($8::int[])[a] * (ms - $2) / $3::float8)::int) AS version,
           ($9::bigint[])[a] AS silence, ($10::text[])[a] AS agent_number,
           CASE WHEN r_store < $12 THEN 1 + 2 * floor(r_turns * 7)::int ELSE 0 END AS n
    FROM base b
), timed AS (
    SELECT s.*,
           ms + greatest(n - 1, 0) * {step}::bigint AS last_ms,
           (ms + greatest(n - 1, 0) * {step}::bigint + silence > $11::bigint + 3600000 AND r_end < 0.8) AS ongoing,
           greatest(n - 1, 0) / 2 AS turns
    FROM shaped s
), ended AS (
    SELECT t.*,
           CASE WHEN ongoing THEN NULL
                WHEN r_end < 0.35 AND last_ms + silence <= $11::bigint THEN 'inactivity'
                WHEN r_end < 0.5 AND n >= 3 THEN 'end_chat_tool' ELSE 'api' END AS reason,
           350 * turns + 600 AS pt, 40 * turns + 120 AS ct
    FROM timed t
), costed AS (
    SELECT e.*,
           CASE reason WHEN 'inactivity' THEN last_ms + silence WHEN 'end_chat_tool' THEN last_ms
                       ELSE last_ms + 5000 + (g % 60000) END AS end_ms,
           round((pt * {input_price} + ct * {output_price})::numeric, 8) AS cost,
           (ARRAY['Positive', 'Positive', 'Neutral', 'Neutral', 'Negative', 'Unknown'])[1 + floor(r_sentiment * 6)::int]
               AS sentiment,
           r_analysis < 0.95 AS analysed
    FROM ended e
)
INSERT INTO chats (
    id, workspace_id, agent_id, agent_version, llm_id, llm_version, type, status, metadata, custom_attributes,
    dynamic_variables, override_dynamic_variables, collected_dynamic_variables, current_state, message_count,
    started_at, ended_at, end_reason, last_user_message_at, last_agent_message_at, chat_cost, chat_analysis,
    extra_usage, combined_cost, user_sentiment, chat_successful, user_number, agent_number
)
SELECT
    {chat_id},
    workspace_id, agent_id, version, llm_id, version,
    CASE WHEN r_type < 0.1 THEN 'sms_chat' ELSE 'api_chat' END,
    CASE WHEN ongoing THEN 'ongoing' ELSE 'ended' END,
    CASE WHEN r_meta < 0.6
         THEN jsonb_build_object('customer_id', 'cus_' || (g % 50000), 'channel', (ARRAY['web', 'ios', 'android'])[1 + g % 3])
         ELSE '{{}}'::jsonb END,
    CASE WHEN r_meta < 0.3
         THEN jsonb_build_object('ticket_id', (100000 + g)::text, 'priority', (1 + g % 3)::text)
         ELSE '{{}}'::jsonb END,
    jsonb_build_object('customer_name', (ARRAY['Sam', 'Ana', 'Lee', 'Kim', 'Noor', 'Jo', 'Ravi', 'Mia'])[1 + g % 8],
                       'plan', (ARRAY['basic', 'pro', 'enterprise'])[1 + g % 3]),
    CASE WHEN g % 20 = 0 THEN '{{"discount": "10%"}}'::jsonb ELSE '{{}}'::jsonb END,
    CASE WHEN turns >= 2 AND r_meta > 0.7 THEN jsonb_build_object('email', 'user' || g || '@example.com')
         ELSE '{{}}'::jsonb END,
    NULL,
    n,
    {started_at},
    CASE WHEN ongoing THEN NULL ELSE {ended_at} END,
    reason,
    CASE WHEN n >= 3 THEN {last_user_at} END,
    CASE WHEN n >= 1 THEN {last_agent_at} END,
    CASE WHEN ongoing THEN NULL ELSE jsonb_build_object(
        'productCosts', jsonb_build_array(
            jsonb_build_object('product', '{model} input tokens', 'unitPrice', {input_price}, 'quantity', pt,
                               'cost', round((pt * {input_price})::numeric, 8)),
            jsonb_build_object('product', '{model} output tokens', 'unitPrice', {output_price}, 'quantity', ct,
                               'cost', round((ct * {output_price})::numeric, 8))),
        'combinedCost', cost) END,
    CASE WHEN ongoing THEN NULL
         WHEN analysed THEN jsonb_build_object(
             'chatSummary', 'The user asked about ' || (ARRAY['an order', 'a refund', 'their account', 'pricing'])[1 + g % 4]
                 || ' and the agent ' || (ARRAY['answered', 'looked it up', 'escalated it'])[1 + g % 3] || '.',
             'userSentiment', sentiment,
             'chatSuccessful', sentiment <> 'Negative',
             'customAnalysisData', jsonb_build_object(
                 'topic', (ARRAY['order', 'refund', 'account', 'other'])[1 + g % 4],
                 'resolved', sentiment <> 'Negative',
                 'order_value', round((r_meta * 300)::numeric, 2)),
             'analysisStatus', 'succeeded',
             'analyzedAt', {analyzed_at})
         ELSE jsonb_build_object('analysisStatus', 'failed',
                                 'analysisError', 'custom_analysis_data: ''topic'' is a required property',
                                 'analyzedAt', {analyzed_at}) END,
    CASE WHEN ongoing THEN '[]'::jsonb
         ELSE jsonb_build_array(jsonb_build_object('model', '{model}', 'prompt_tokens', 600,
                                                   'completion_tokens', 120, 'purpose', 'analysis')) END,
    CASE WHEN ongoing THEN NULL ELSE cost END,
    CASE WHEN NOT ongoing AND analysed THEN sentiment END,
    CASE WHEN NOT ongoing AND analysed THEN sentiment <> 'Negative' END,
    CASE WHEN r_type < 0.1 THEN '+1555' || lpad((g % 10000000)::text, 7, '0') END,
    CASE WHEN r_type < 0.1 THEN agent_number END
FROM costed
""".format(
    step=MESSAGE_STEP_MS,
    input_price=INPUT_PRICE,
    output_price=OUTPUT_PRICE,
    model=MODEL,
    chat_id=_ulid_sql("chat", "ms"),
    started_at=_at_sql("ms"),
    ended_at=_at_sql("end_ms"),
    last_user_at=_at_sql(f"ms + (n - 2) * {MESSAGE_STEP_MS}::bigint"),
    last_agent_at=_at_sql("last_ms"),
    analyzed_at=_iso_sql(_at_sql("end_ms + 4000")),
)

USER_LINES = [
    "Hi, where is my order?",
    "It was order A-1042, placed last Tuesday.",
    "Can I get a refund instead? The box arrived damaged and two of the glasses were broken.",
    "My email is on the account already, you should have it.",
    "OK thanks.",
    "How do I change the card on my account?",
    "That did not work, the page just reloads and nothing happens when I press save.",
    "Yes please.",
]
AGENT_LINES = [
    "Let me look that up for you.",
    (
        "Your order shipped yesterday and should arrive within two business days. "
        "Here is the tracking link: https://track.example.com/A-1042"
    ),
    (
        "I'm sorry about that! I've started a refund of $42.50 to your original card; "
        "it usually shows up within 5-7 business days."
    ),
    "You can change your card under Settings > Billing > Payment method.",
    "Is there anything else I can help you with?",
    "I have escalated this to our billing team; they will email you within one business day.",
]
TOOL_CALL = json.dumps([{
    "id": "call_0001", "type": "function",
    "function": {"name": "lookup_order", "arguments": "{\"order_id\": \"A-1042\"}"},
    "result": {"content": "{\"status\": \"shipped\", \"eta\": \"2 days\"}", "successful": True},
}])


def _messages_sql(source: str, tool_share: float) -> str:
    """INSERT of the messages of the chats ``source`` selects (id, started_ms, message_count, customer name)."""
    return f"""
INSERT INTO chat_messages (id, chat_id, seq, role, content, name, tool_calls, model, prompt_tokens,
                           completion_tokens, created_at, multimedia)
SELECT {_ulid_sql("msg", "m.ms")}, c.id, m.seq,
       CASE WHEN m.seq % 2 = 0 THEN 'assistant' ELSE 'user' END,
       CASE WHEN m.seq = 0 THEN 'Hi ' || c.customer || '! How can I help you today?'
            WHEN m.seq % 2 = 1 THEN ($1::text[])[1 + (m.seq / 2 + c.salt) % cardinality($1::text[])]
            ELSE ($2::text[])[1 + (m.seq / 2 + c.salt) % cardinality($2::text[])] END,
       NULL,
       CASE WHEN m.seq % 2 = 0 AND m.seq > 0 AND random() < {tool_share} THEN $3::jsonb END,
       CASE WHEN m.seq % 2 = 0 AND m.seq > 0 THEN '{MODEL}' END,
       CASE WHEN m.seq % 2 = 0 AND m.seq > 0 THEN 300 + 25 * m.seq ELSE 0 END,
       CASE WHEN m.seq % 2 = 0 AND m.seq > 0 THEN 20 + (m.seq * 7) % 60 ELSE 0 END,
       {_at_sql("m.ms")},
       NULL
FROM ({source}) c
CROSS JOIN LATERAL (
    SELECT s AS seq, c.started_ms + s * {MESSAGE_STEP_MS}::bigint AS ms FROM generate_series(0, c.message_count - 1) s
) m
"""


STORED_CHATS = """
SELECT id, round(extract(epoch FROM started_at) * 1000)::bigint AS started_ms, message_count,
       dynamic_variables->>'customer_name' AS customer, abs(hashtext(id)) % 8 AS salt
FROM chats WHERE message_count > 0 ORDER BY id
"""


def _cost(prompt_tokens: int, completion_tokens: int) -> dict:
    """``chatCost`` as ``chatplane.chats.cost`` writes it, for one model."""
    products = [
        {"product": f"{MODEL} {direction} tokens", "unitPrice": price, "quantity": count, "cost": round(price * count, 8)}
        for direction, price, count in (("input", INPUT_PRICE, prompt_tokens), ("output", OUTPUT_PRICE, completion_tokens))
    ]
    return {"productCosts": products, "combinedCost": round(sum(p["cost"] for p in products), 8)}


async def generate(db: asyncpg.Connection, *, chats: int, store_share: float, now: datetime) -> tuple[str, list[Agent]]:
    """Fill the migrated database; returns the id of the 1,000-message chat and the agents."""
    span_ms = 90 * DAY_MS
    now_ms = int(now.timestamp() * 1000)
    t0_ms = now_ms - span_ms - 600_000  # the newest chats started ten minutes ago
    t0 = datetime.fromtimestamp(t0_ms / 1000, UTC)
    agents = _make_agents(t0)

    workspace_ids = []
    for name in WORKSPACES:
        workspace_ids.append(await db.fetchval(
            "INSERT INTO workspaces (name, created_at, webhook_key) VALUES ($1, $2, $3) RETURNING id",
            name, t0 - timedelta(days=30), secrets.token_hex(32),
        ))
    key_id = await db.fetchval(
        "INSERT INTO api_keys (key_hash, prefix, name, created_at) VALUES ($1, $2, 'bench', $3) RETURNING id",
        hashlib.sha256(KEY.encode()).hexdigest(), KEY[:10], t0,
    )
    await db.executemany("INSERT INTO api_key_workspaces (api_key_id, workspace_id) VALUES ($1, $2)",
                         [(key_id, w) for w in workspace_ids])

    for agent in agents:
        for version in range(1, agent.versions + 1):
            created = t0 + timedelta(milliseconds=span_ms * (version - 1) / agent.versions) - timedelta(days=1)
            llm, config = _configs(agent, version)
            latest = version == agent.versions
            for table, row_id, data, extra in (("llms", agent.llm_id, llm, ""), ("chat_agents", agent.agent_id, config, ", llm_id")):
                await db.execute(
                    f"INSERT INTO {table} (id, version, workspace_id, is_published, is_latest, config, created_at,"
                    f" updated_at, deleted_at{extra}) VALUES ($1, $2, $3, true, $4, $5::jsonb, $6, $6, NULL"
                    f"{', $7' if extra else ''})",
                    row_id, version, agent.workspace_id, latest, json.dumps(data), created,
                    *([agent.llm_id] if extra else []),
                )

    cumulative, total = [], 0.0
    for agent in agents:
        cumulative.append(total)
        total += agent.share
    await db.execute("SET synchronous_commit = off")
    started = time.perf_counter()
    await db.execute(
        CHATS_SQL, chats, t0_ms, span_ms, cumulative,
        [a.agent_id for a in agents], [a.workspace_id for a in agents], [a.llm_id for a in agents],
        [a.versions for a in agents], [a.silence_ms for a in agents], [a.number for a in agents],
        now_ms, store_share,
    )
    print(f"  chats: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    await db.execute(_messages_sql(STORED_CHATS, 0.05), USER_LINES, AGENT_LINES, TOOL_CALL)
    print(f"  their messages: {time.perf_counter() - started:.1f} s", flush=True)

    # The long chat: two days old, ended, on the busiest agent of workspace 1.
    big = agents[0]
    started_ms = now_ms - 2 * DAY_MS
    ended_ms = started_ms + BIG_CHAT_MESSAGES * MESSAGE_STEP_MS
    replies = range(2, BIG_CHAT_MESSAGES, 2)  # the tokens _messages_sql gives each reply
    cost = _cost(sum(300 + 25 * seq for seq in replies), sum(20 + (seq * 7) % 60 for seq in replies))
    analysis = {
        "chatSummary": "A long conversation about an order, a refund and the account's card.",
        "userSentiment": "Positive", "chatSuccessful": True,
        "customAnalysisData": {"topic": "order", "resolved": True, "order_value": 42.5},
        "analysisStatus": "succeeded",
        "analyzedAt": datetime.fromtimestamp((ended_ms + 4000) / 1000, UTC).isoformat().replace("+00:00", "Z"),
    }
    big_id = await db.fetchval(
        f"""
        INSERT INTO chats (id, workspace_id, agent_id, agent_version, llm_id, llm_version, type, status, metadata,
                           custom_attributes, dynamic_variables, override_dynamic_variables,
                           collected_dynamic_variables, current_state, message_count, started_at, ended_at,
                           end_reason, last_user_message_at, last_agent_message_at, chat_cost, chat_analysis,
                           extra_usage, combined_cost, user_sentiment, chat_successful)
        VALUES ({_ulid_sql("chat", "$1::bigint")}, $2, $3, $4, $5, $4, 'api_chat', 'ended',
                '{{"customer_id": "cus_1"}}', '{{"ticket_id": "7"}}', '{{"customer_name": "Sam", "plan": "pro"}}',
                '{{}}', '{{"email": "sam@example.com"}}', NULL, $6, {_at_sql("$1::bigint")}, {_at_sql("$7::bigint")},
                'api', {_at_sql(f"$7::bigint - {2 * MESSAGE_STEP_MS}")}, {_at_sql(f"$7::bigint - {MESSAGE_STEP_MS}")},
                $8::jsonb, $9::jsonb, '[]', $10, 'Positive', true)
        RETURNING id
        """,
        started_ms, big.workspace_id, big.agent_id, big.versions, big.llm_id, BIG_CHAT_MESSAGES, ended_ms,
        json.dumps(cost), json.dumps(analysis), cost["combinedCost"],
    )
    await db.execute(
        _messages_sql(
            f"SELECT id, {started_ms}::bigint AS started_ms, message_count, 'Sam' AS customer, 0 AS salt "
            f"FROM chats WHERE id = '{big_id}'",
            0.1,
        ),
        USER_LINES, AGENT_LINES, TOOL_CALL,
    )
    return big_id, agents


# --- measuring -----------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Conn:
    """A minimal keep-alive HTTP/1.1 client (see bench/chats.py: httpx costs the 2-core box too much)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode() if body is not None else b""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return status, await self.reader.readexactly(length)  # type: ignore[union-attr]


def cpu_ms(pids: list[int]) -> dict[int, float]:
    """User+system CPU milliseconds of each process (gone ones left out)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
    return out


class Meter:
    """Latencies of one kind of request, and the CPU they cost the server and its database backends.

    CPU per request is the figure the machine's load does not move much: on a
    shared 2-core VM the tail latencies are mostly time spent waiting for a core.
    """

    def __init__(self, server_pid: int, admin: asyncpg.Connection, db_name: str) -> None:
        self.server_pid = server_pid
        self.admin = admin
        self.db_name = db_name

    async def _pids(self) -> list[int]:
        backends = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.db_name)
        return [self.server_pid, *(r["pid"] for r in backends)]

    async def start(self) -> None:
        self.lat: list[float] = []
        self.before = cpu_ms(await self._pids())

    async def stop(self, name: str, target_ms: float, extra: str = "") -> None:
        after = cpu_ms(await self._pids())
        spent = {pid: ms - self.before.get(pid, 0.0) for pid, ms in after.items()}
        app = spent.pop(self.server_pid, 0.0) / len(self.lat)
        db = sum(spent.values()) / len(self.lat)
        p50, p99 = pct(self.lat, 0.5) * 1000, pct(self.lat, 0.99) * 1000
        verdict = "met" if p99 <= target_ms else "MISSED"
        print(f"{name:<34} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  (n={len(self.lat)}, target p99 <= {target_ms:.0f} ms: "
              f"{verdict})  cpu/request: server {app:5.2f} ms, postgres {db:5.2f} ms{extra}", flush=True)


def list_filter(rng: random.Random, agents: list[Agent], now_ms: int) -> dict:
    """Workspace 1: one of its agents, ended chats, a window of 1, 7 or 30 days somewhere in the 90."""
    agent = rng.choice([a for a in agents if a.workspace_id == 1])
    days = rng.choice([1, 7, 30])
    hi = now_ms - rng.randrange(0, (90 - days) * DAY_MS)
    return {
        "agent": [{"agent_id": agent.agent_id}],
        "chat_status": {"op": "in", "value": ["ended"]},
        "start_timestamp": {"op": "bt", "value": [hi - days * DAY_MS, hi]},
    }


async def measure(port: int, meter: Meter, *, agents: list[Agent], big_id: str, requests: int, now: datetime) -> None:
    now_ms = int(now.timestamp() * 1000)
    conn = Conn(port)
    rng = random.Random(6)

    def body(**extra: object) -> dict:
        return {"workspaceId": 1, "filter_criteria": list_filter(rng, agents, now_ms), **extra}

    async def timed(method: str, path: str, request: dict | None = None) -> dict:
        started = time.perf_counter()
        status, raw = await conn.request(method, path, request)
        meter.lat.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"{method} {path} {status}: {raw[:500]!r}")
        return json.loads(raw)

    # Warm up: compiled statements, prepared statements, the pages the plans touch.
    await meter.start()
    for _ in range(50):
        await timed("POST", "/v3/list-chats", body(include_total=True))
        await timed("GET", f"/api/chats/{big_id}?workspaceId=1")

    await meter.start()
    for _ in range(requests):
        await timed("POST", "/v3/list-chats", body())
    await meter.stop("list-chats", LIST_TARGET_MS)

    await meter.start()
    totals = [(await timed("POST", "/v3/list-chats", body(include_total=True)))["total"] for _ in range(requests)]
    await meter.stop("list-chats include_total", LIST_TARGET_MS, f"  (totals p50 {pct(totals, 0.5):,}, max {max(totals):,})")

    pages = 5
    await meter.start()
    while len(meter.lat) < requests:
        request = body()
        for _ in range(pages):
            answer = await timed("POST", "/v3/list-chats", request)
            if not answer["pagination_key"]:
                break
            request = {**request, "pagination_key": answer["pagination_key"]}
    await meter.stop(f"list-chats, pages 1-{pages} by key", LIST_TARGET_MS)

    await meter.start()
    for _ in range(requests):
        await timed("GET", f"/api/chats/{big_id}?workspaceId=1")
    await meter.stop(f"get chat of {BIG_CHAT_MESSAGES:,} messages", GET_TARGET_MS)


# --- the run -------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="an existing database of the cluster to work from")
    parser.add_argument("--chats", type=int, default=1_000_000)
    parser.add_argument("--store-messages", type=float, default=0.2, help="share of chats whose messages are stored")
    parser.add_argument("--requests", type=int, default=300, help="per measurement")
    parser.add_argument("--keep", action="store_true", help="leave the database (its URL is printed)")
    parser.add_argument("--no-jobs", action="store_true", help="serve without the in-process job worker")
    args = parser.parse_args()

    db_name = f"chatplane_scale_{uuid.uuid4().hex[:8]}"
    db_url = args.pg_url.rsplit("/", 1)[0] + "/" + db_name
    admin = await asyncpg.connect(args.pg_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    tmp = Path(tempfile.mkdtemp(prefix="chatplane-scale-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(
        CHATPLANE_DATA_DIR=str(tmp),
        CHATPLANE_DATABASE_URL=db_url,
        # The model the data was made with; never called here.
        CHATPLANE_PROVIDERS=json.dumps([{"name": "openai", "base_url": "http://127.0.0.1:9/v1", "models": [
            {"name": MODEL, "input_per_million": INPUT_PRICE * 1e6, "output_per_million": OUTPUT_PRICE * 1e6}]}]),
        CHATPLANE_DEFAULT_MODEL=MODEL,
    )
    if args.no_jobs:
        env["CHATPLANE_JOBS__IN_SERVER"] = "false"
    server = None
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "chatplane.cli", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"database {db_name}: migrated in {time.perf_counter() - started:.1f} s", flush=True)

        now = datetime.now(UTC)
        db = await asyncpg.connect(db_url)
        try:
            started = time.perf_counter()
            big_id, agents = await generate(db, chats=args.chats, store_share=args.store_messages, now=now)
            generated = time.perf_counter() - started
            started = time.perf_counter()
            await db.execute("VACUUM (ANALYZE)")
            vacuumed = time.perf_counter() - started
            chats, messages, ongoing = await db.fetchrow(
                "SELECT (SELECT count(*) FROM chats), (SELECT count(*) FROM chat_messages),"
                " (SELECT count(*) FROM chats WHERE status = 'ongoing')")
            sizes = await db.fetchrow(
                "SELECT pg_total_relation_size('chats'), pg_total_relation_size('chat_messages')")
        finally:
            await db.close()
        print(f"generated {chats:,} chats ({ongoing:,} ongoing) and {messages:,} messages in {generated:.1f} s "
              f"({chats / generated:,.0f} chats/s); VACUUM ANALYZE {vacuumed:.1f} s; "
              f"chats {sizes[0] / 2**20:,.0f} MiB, messages {sizes[1] / 2**20:,.0f} MiB (with indexes)", flush=True)

        port = 19000 + os.getpid() % 1000
        server = subprocess.Popen(
            [sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL,
        )
        await wait_up(f"http://127.0.0.1:{port}/healthz", server)
        load = os.getloadavg()[0]
        print(f"serving on one process; load average {load:.1f} on {os.cpu_count()} cores "
              f"(figures below move with it); filters: a workspace-1 agent, status ended, 1/7/30 days", flush=True)
        meter = Meter(server.pid, admin, db_name)
        await measure(port, meter, agents=agents, big_id=big_id, requests=args.requests, now=now)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if args.keep:
            print(f"kept: {db_url}  (the key: {KEY}; drop with: psql {args.pg_url} -c 'DROP DATABASE \"{db_name}\"')")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
