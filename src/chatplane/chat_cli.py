"""``chatplane chat AGENT_ID``: talk to an agent from the terminal, over the API."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import httpx

END_WORDS = {"/end", "/quit", "/exit"}


def _fail(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def run_chat(
    *, url: str, key: str, workspace_id: int, agent_id: str,
    stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout,
) -> int:
    """Start a chat, then one turn per line of input; replies stream as they come.

    ``/end`` (or end of input) ends the chat.
    """
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(10, read=300)) as client:
        created = client.post("/api/chats", json={"workspaceId": workspace_id, "agent_id": agent_id})
        if created.status_code != 201:
            print(f"chatplane: {_fail(created)}", file=sys.stderr)
            return 1
        chat: dict[str, Any] = created.json()
        print(f"[chat {chat['chatId']}; /end to finish]", file=stdout, flush=True)
        for message in chat["messages"]:
            print(f"agent> {message['content']}", file=stdout, flush=True)
        for line in stdin:
            text = line.strip()
            if not text:
                continue
            if text in END_WORDS:
                break
            if not _turn(client, stdout, chat["chatId"], workspace_id, text):
                return 1
        ended = client.post(f"/api/chats/{chat['chatId']}/end", json={"workspaceId": workspace_id})
        if ended.status_code not in (204, 409):
            print(f"chatplane: {_fail(ended)}", file=sys.stderr)
            return 1
        print("[chat ended]", file=stdout, flush=True)
    return 0


def _turn(client: httpx.Client, stdout: IO[str], chat_id: str, workspace_id: int, text: str) -> bool:
    with client.stream(
        "POST", f"/api/chats/{chat_id}/completions",
        json={"workspaceId": workspace_id, "content": text}, headers={"Accept": "text/event-stream"},
    ) as response:
        if response.status_code != 201:
            response.read()
            print(f"chatplane: {_fail(response)}", file=sys.stderr)
            return False
        print("agent> ", end="", file=stdout, flush=True)
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "delta":
                    print(data["content"], end="", file=stdout, flush=True)
                elif event == "error":
                    print(f"\nchatplane: {data['error']['message']}", file=sys.stderr)
                    return True  # the chat is unchanged; the user may try again
        print(file=stdout, flush=True)
    return True
