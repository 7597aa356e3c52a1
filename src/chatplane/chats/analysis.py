"""Post-chat analysis: summary, sentiment, success and the agent's own fields.

Asked of ``post_chat_analysis_model`` (else the chat's LLM model) with output
constrained to a JSON schema, then validated against that schema before
anything is stored. A reply that does not validate is asked again, up to
``ATTEMPTS`` times; after that the analysis is recorded as failed
(``chatAnalysis.analysisStatus = "failed"`` with the reason), never stored
half-valid. Success queues the ``chat_analyzed`` webhook.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatplane import jobs, text
from chatplane.chats import service
from chatplane.chats.cost import update_cost
from chatplane.chats.lifecycle import ANALYZE_JOB, agent_config_of, emit
from chatplane.chats.prompt import transcript
from chatplane.db import transaction, utcnow
from chatplane.text import iso
from chatplane.models import Chat, Llm
from chatplane.providers import ModelRequest, ProviderError, Registry

ATTEMPTS = 3
SENTIMENTS = ["Positive", "Neutral", "Negative", "Unknown"]


def analysis_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in fields:
        kind = field["type"]
        if kind == "enum":
            schema: dict[str, Any] = {"type": "string", "enum": field["choices"]}
        elif kind in ("string", "boolean", "number"):
            schema = {"type": kind}
        else:  # pragma: no cover - the agent schema allows only these
            continue
        schema["description"] = field["description"]
        properties[field["name"]] = schema
        if field.get("required"):
            required.append(field["name"])
    return {
        "type": "object",
        "properties": {
            "chat_summary": {"type": "string", "description": "A few sentences on what happened."},
            "user_sentiment": {"type": "string", "enum": SENTIMENTS},
            "chat_successful": {"type": "boolean", "description": "Did the agent do what the user needed?"},
            "custom_analysis_data": {
                "type": "object", "properties": properties, "required": required, "additionalProperties": False,
            },
        },
        "required": ["chat_summary", "user_sentiment", "chat_successful", "custom_analysis_data"],
        "additionalProperties": False,
    }


def _prompt(chat_transcript: str, fields: list[dict[str, Any]]) -> list[dict[str, str]]:
    lines = [
        "You analyse a finished chat between an agent and a user. Answer only with JSON matching the schema.",
        "chat_summary: a short summary. user_sentiment: Positive, Neutral, Negative or Unknown.",
        "chat_successful: true if the agent did what the user needed.",
    ]
    for field in fields:
        extra = f" One of: {', '.join(field['choices'])}." if field["type"] == "enum" else ""
        lines.append(f"custom_analysis_data.{field['name']} ({field['type']}): {field['description']}.{extra}")
    return [
        {"role": "system", "content": "\n".join(lines)},
        {"role": "user", "content": f"The chat:\n{chat_transcript or '(no messages)'}"},
    ]


async def analyze(sessions: async_sessionmaker[AsyncSession], *, registry: Registry, chat_id: str) -> Chat | None:
    """Run the analysis of a chat and store the outcome (success or failure).

    Three steps, so that no transaction (on SQLite: the write lock) is held
    while the model thinks: read what the model needs, ask it, store.
    """
    async with transaction(sessions) as session:
        chat = await session.get(Chat, chat_id)
        if chat is None:
            return None  # deleted before it could be analysed
        agent_config = await agent_config_of(session, chat)
        llm_model = await session.scalar(
            select(Llm.config["model"].as_string()).where(Llm.id == chat.llm_id, Llm.version == chat.llm_version)
        )
        messages = await service.get_messages(session, chat_id=chat.id)
    model = agent_config.get("post_chat_analysis_model") or llm_model
    fields = agent_config.get("post_chat_analysis_data") or []
    schema = analysis_schema(fields)
    validator = Draft202012Validator(schema)
    request = ModelRequest(
        messages=_prompt(transcript(messages), fields), temperature=0.0, json_schema=schema, max_tokens=1024
    )

    usage: list[dict[str, Any]] = []
    problem = "no answer"
    result: dict[str, Any] | None = None
    for _ in range(ATTEMPTS):
        try:
            reply = await registry.complete(model, request)
        except ProviderError as exc:
            problem = exc.message
            continue
        usage.append({"model": model, "prompt_tokens": reply.prompt_tokens,
                      "completion_tokens": reply.completion_tokens, "purpose": "analysis"})
        try:
            candidate = text.loads(reply.content)
        except ValueError:
            problem = "the model's answer is not JSON"
            continue
        errors = sorted(validator.iter_errors(candidate), key=lambda e: list(e.path))
        if errors:
            problem = f"{'.'.join(map(str, errors[0].path)) or 'answer'}: {errors[0].message}"
            continue
        result = candidate
        break

    async with transaction(sessions) as session:
        chat = await session.get(Chat, chat_id, with_for_update=True)
        if chat is None:
            return None
        chat.extra_usage = [*(chat.extra_usage or []), *usage]
        if result is None:
            chat.chat_analysis = {"analysisStatus": "failed", "analysisError": problem[:500], "analyzedAt": _now()}
        else:
            custom = result["custom_analysis_data"]
            missing_required = any(f.get("required") and f["name"] not in custom for f in fields)
            successful = bool(result["chat_successful"]) and not missing_required
            chat.chat_analysis = {
                "chatSummary": result["chat_summary"],
                "userSentiment": result["user_sentiment"],
                "chatSuccessful": successful,
                "customAnalysisData": custom,
                "analysisStatus": "succeeded",
                "analyzedAt": _now(),
            }
            chat.user_sentiment = result["user_sentiment"]
            chat.chat_successful = successful
        await update_cost(session, registry=registry, chat=chat)
        await session.flush()
        if result is not None:
            await emit(session, chat, "chat_analyzed", agent_config)
    return chat


def _now() -> str:
    return iso(utcnow())


@jobs.handler(ANALYZE_JOB)
async def analyze_job(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    await analyze(context.sessions, registry=context.services.registry, chat_id=payload["chat_id"])
