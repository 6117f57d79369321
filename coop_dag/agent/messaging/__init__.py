"""Agent-to-agent messaging: CooperBench's Redis mailboxes and the `send_message` parser.

- `errors.py`: `MessagingError` and its kinds (the runtime turns any into a tool error).
- `bus.py`: `MessageBus` (Redis layout, presence, delivery) and the trajectory /
  conversation.json formatting of messages.
- `parser.py`: `parse_send_message`, which pulls `send_message` calls out of a bash command,
  on top of a small bash lexer (`lexer.py`: words, operators, redirections, heredocs) and
  its split into simple commands (`segments.py`).
"""
