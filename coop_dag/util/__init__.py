"""Stage-free helpers, stdlib only: atomic file writes and hashing (files), the file-path regex
(paths), owned scratch directories (scratch)."""
