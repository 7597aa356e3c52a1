"""Retell's own routes, beside the UponAI ones: see ``common``."""

from chatplane.retell import agents, chats, llms

ROUTERS = (llms.router, agents.router, chats.router)
