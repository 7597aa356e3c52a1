"""``chatplane chat``: a terminal conversation, run as a real process against the server."""

from __future__ import annotations

import os
import subprocess
import sys

from chatplane.testing import Fail, Reply
from tests.chat_helpers import make_agent, make_llm
from tests.conftest import SCRIPTED_NO_RETRY, Api, ScriptedModel


def _chat(api: Api, agent_id: str, stdin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env["CHATPLANE_API_KEY"] = api.key
    return subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "chat", agent_id, "--workspace", str(api.ws), "--url", api.backend.url,
         *extra],
        input=stdin, env=env, capture_output=True, text=True, timeout=60,
    )


def test_a_conversation_in_the_terminal(api: Api, model: ScriptedModel) -> None:
    agent = make_agent(api, make_llm(api, begin_message="Hi, how can I help?"))
    model.push(Reply("We open at nine."), Reply("You're welcome."))
    done = _chat(api, agent["agent_id"], "When do you open?\n\nthanks\n/end\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:] == ["agent> Hi, how can I help?", "agent> We open at nine.", "agent> You're welcome.",
                         "[chat ended]"]
    chat_id = lines[0].split()[1].rstrip(";")
    chat = api.get(f"/api/chats/{chat_id}").json()
    assert chat["status"] == "ended"
    assert chat["transcript"].splitlines()[1:3] == ["User: When do you open?", "Agent: We open at nine."]


def test_errors_are_said_plainly(api: Api, model: ScriptedModel) -> None:
    unknown = _chat(api, "chat_agent_nope", "hi\n")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    wrong_key = _chat(api, "chat_agent_nope", "hi\n", "--key", "cp_wrong")
    assert wrong_key.returncode == 1 and "invalid" in wrong_key.stderr
    agent = make_agent(api, make_llm(api, model=SCRIPTED_NO_RETRY))
    model.push(Fail(500, "model down"), Reply("better now"))
    failing = _chat(api, agent["agent_id"], "hi\nhi again\n")
    assert failing.returncode == 0
    assert "model down" in failing.stderr and "agent> better now" in failing.stdout
