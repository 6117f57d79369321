"""Serving adapters on vLLM: the engine's client (vllm) and launch (vllm_launch); start / reuse /
heal a server (server) with leases (leases) and what it hands out (endpoints); the settings the
resource and `coop-dag eval` launch from (settings); adapter swaps and their proof (swap, with
the greedy probe request of greedy); errors (errors); the lease watcher (lease_watch); the
first-turn probe (probe)."""
