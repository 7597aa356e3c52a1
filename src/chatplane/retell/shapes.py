"""A chatplane chat (``chats.service.chat_out``) in Retell's shape: for the
Retell routes and for webhooks of agents whose ``webhook_format`` is ``retell``.

A chat is renamed (``shape_chat``): ms times, ``chat_status``/``chat_type``,
``retell_llm_dynamic_variables``, and the messages as
``message_with_tool_calls``: an assistant message is an ``agent`` message (if it
said something), then for each tool call a ``tool_call_invocation`` and its
``tool_call_result``, or a ``state_transition`` for a ``transition_to_<state>`` call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chatplane.chats.tools import TRANSITION_PREFIX


def ms(at: datetime | None) -> int | None:
    """Unix milliseconds, as Retell gives times."""
    return None if at is None else int(at.astimezone(UTC).timestamp() * 1000)


def _at(value: Any) -> int | None:
    return ms(datetime.fromisoformat(value) if isinstance(value, str) else value)


def shape_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``message_out`` dicts as Retell's ``message_with_tool_calls``."""
    out: list[dict[str, Any]] = []
    for message in messages:
        at = _at(message["createdAt"])
        if message["role"] == "user":
            out.append({"role": "user", "content": message["content"], "message_id": message["messageId"],
                        "created_timestamp": at})
            continue
        if message["content"]:
            out.append({"role": "agent", "content": message["content"], "message_id": message["messageId"],
                        "created_timestamp": at})
        for call in message["tool_calls"] or []:
            name = call["function"]["name"]
            if name.startswith(TRANSITION_PREFIX):
                out.append({"role": "state_transition", "new_state_name": name[len(TRANSITION_PREFIX):],
                            "created_timestamp": at})
                continue
            out.append({"role": "tool_call_invocation", "tool_call_id": call["id"], "name": name,
                        "arguments": call["function"]["arguments"], "created_timestamp": at})
            if call.get("result") is not None:
                out.append({"role": "tool_call_result", "tool_call_id": call["id"],
                            "content": call["result"]["content"], "successful": call["result"]["successful"],
                            "created_timestamp": at})
    return out


def _analysis(found: dict[str, Any] | None) -> dict[str, Any] | None:
    if not found:
        return None
    return {"chat_summary": found.get("chatSummary"), "user_sentiment": found.get("userSentiment"),
            "chat_successful": found.get("chatSuccessful"), "custom_analysis_data": found.get("customAnalysisData")}


def _cost(found: dict[str, Any] | None) -> dict[str, Any] | None:
    if not found:
        return None
    return {"combined_cost": found.get("combinedCost"),
            "product_costs": [{"product": p["product"], "unit_price": p.get("unitPrice"), "cost": p["cost"]}
                              for p in found.get("productCosts") or []]}


def shape_chat(chat: dict[str, Any]) -> dict[str, Any]:
    """``service.chat_out`` as Retell's ``ChatResponse`` (a list item: without
    messages and transcript when ``chat_out`` left them out)."""
    out = {
        "chat_id": chat["chatId"],
        "agent_id": chat["agentId"],
        "version": chat["version"],
        "chat_status": chat["status"],
        "chat_type": chat["type"],
        "metadata": chat["metadata"],
        "custom_attributes": chat["customAttributes"],
        "start_timestamp": _at(chat["startedAt"]),
        "end_timestamp": _at(chat["endedAt"]),
        "chat_cost": _cost(chat["chatCost"]),
        "chat_analysis": _analysis(chat["chatAnalysis"]),
        "collected_dynamic_variables": chat["collectedDynamicVariables"],
        "retell_llm_dynamic_variables": chat["uponai_dynamic_variables"],
    }
    if "messages" in chat:
        out["transcript"] = chat["transcript"]
        out["message_with_tool_calls"] = shape_messages(chat["messages"])
    return out
