"""The turn engine: lock -> read -> context -> respond -> write (``engine.Turns``)."""

from chatplane.chats.turn.engine import TurnAnswer, Turns

__all__ = ["TurnAnswer", "Turns"]
