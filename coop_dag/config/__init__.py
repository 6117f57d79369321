"""Configuration: the embedded / cluster profile (profiles), the variants file (variants) and the
host checks the cluster profile needs (hostcheck)."""
