"""The agent runtime: the loop (loop), its one bash tool (actions), chat models and teachers, the
prompts, the Redis message bus, sandboxes, one pair's episode and many pairs' rollouts."""
