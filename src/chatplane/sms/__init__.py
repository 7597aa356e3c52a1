"""Text chats through Twilio: phone numbers, inbound and outbound SMS chats.

- ``routes.py``: ``/api/phone-numbers``, ``POST /api/chats/sms`` and Twilio's
  ``POST /webhooks/twilio/sms``.
- ``service.py``: the phone-number resource, receiving a text (verify, store,
  queue), starting an outbound chat.
- ``tasks.py``: the jobs: answering a conversation's pending texts as one
  turn, and sending one text through Twilio.
- ``twilio.py``: the ``twilio`` package's signature check and REST client.
- ``credentials.py``: auth tokens encrypted at rest.
"""
