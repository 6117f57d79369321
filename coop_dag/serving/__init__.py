"""Serving adapters on vLLM: the engine command and client (vllm), start / reuse / attach with
leases and adapter swaps (server), the lease watcher (lease_watch), the first-turn probe (probe)."""
