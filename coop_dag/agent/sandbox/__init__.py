"""Where an agent's bash commands run: one interface, two backends.

- `base.py`: the interface (`Sandbox`), `CommandResult`, `SandboxError`, the observation
  format and the diff script both backends run.
- `process.py`: runs one command in its own process group with capped output capture and a
  timeout that kills the whole group.
- `bwrap.py`: bubblewrap confinement (`bwrap_argv`, the mounts, the environment, `BwrapRunner`).
- `local.py`: `LocalSandbox` (embedded default), a per-agent checkout run through bubblewrap.
- `docker.py`: `DockerSandbox` (cluster), CooperBench's task images, and the `docker` argv
  builders evaluation also uses.
"""
