"""Retell's own routes, beside the UponAI ones (``common``; the routers are in
``llms``, ``agents`` and ``chats``), and Retell's shapes (``shapes``)."""
