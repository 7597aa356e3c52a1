"""chatplane: a self-hostable chat-agent server speaking the UponAI/Retell chat API."""

__version__ = "0.1.0"
