"""A second real client: the official TypeScript SDK (``retell-sdk`` 5.66.1 on
npm, pinned in tests/retell/js/package-lock.json, installed by ``make test``)
run with node against chatplane: create an agent, a chat, a completion, get,
list, end, and a 404 as its ``NotFoundError``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from chatplane.testing import Reply
from tests.conftest import SCRIPTED, Api, ScriptedModel

JS = Path(__file__).parent / "js"


def test_the_typescript_sdk_runs_a_chat(api: Api, model: ScriptedModel) -> None:
    node = shutil.which("node")
    assert node, "node is needed (make test installs it: scripts/ensure-node)"
    assert (JS / "node_modules" / "retell-sdk").is_dir(), "run scripts/ensure-node (npm ci in tests/retell/js)"
    model.push(Reply("Hello, node."))
    env = {**os.environ, "CHATPLANE_URL": api.backend.url, "CHATPLANE_KEY": api.key, "CHATPLANE_MODEL": SCRIPTED}
    run = subprocess.run([node, "drive.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)

    assert seen["llm"]["llm_id"].startswith("llm_") and seen["llm"]["model"] == SCRIPTED
    assert seen["agent"]["response_engine"] == {"type": "retell-llm", "llm_id": seen["llm"]["llm_id"]}
    created = seen["created"]
    assert created["chat_status"] == "ongoing" and created["agent_id"] == seen["agent"]["agent_id"]
    assert [(m["role"], m["content"]) for m in created["message_with_tool_calls"]] == [("agent", "Hi from node!")]
    assert [(m["role"], m["content"]) for m in seen["completion"]["messages"]] == [("agent", "Hello, node.")]
    assert seen["retrieved"]["transcript"] == "Agent: Hi from node!\nUser: hello from node\nAgent: Hello, node.\n"
    assert [c["chat_id"] for c in seen["listed"]["items"]] == [created["chat_id"]]
    assert seen["listed"]["has_more"] is False
    assert seen.get("ended") is None and seen["afterEnd"]["chat_status"] == "ended"
    assert seen["missing"] == {"name": "NotFoundError", "status": 404}
    # What node saw is what the server stored.
    assert api.get(f"/api/chats/{created['chat_id']}").json()["status"] == "ended"
