"""The LangGraph peer: one node that calls the stub through an OpenAI-compatible
chat model, on the ``messages`` channel, so the server's checkpointer keeps
each thread's history and every run sends the model the whole conversation
(as chatplane does). ``peers.py`` serves it with ``langgraph dev`` and sets
``PEER_STUB_URL``.
"""

import os

from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph

SYSTEM = "You are Ava."

model = ChatOpenAI(model="stub", base_url=os.environ["PEER_STUB_URL"], api_key="not-needed", temperature=0)


async def respond(state: MessagesState) -> dict:
    reply = await model.ainvoke([{"role": "system", "content": SYSTEM}, *state["messages"]])
    return {"messages": [reply]}


builder = StateGraph(MessagesState)
builder.add_node("respond", respond)
builder.add_edge(START, "respond")
builder.add_edge("respond", END)
graph = builder.compile()
