"""A CPU platform for verl (>= 0.9), so verl's SFT trainer runs on a machine without GPUs.

Loaded *inside verl's own environment*, never by the core project: verl imports it while
importing itself when ``VERL_USE_EXTERNAL_MODULES=coop_dag.training.verl_cpu_platform`` is set
(``verl/__init__.py`` -> ``import_external_libs``), and ``VERL_PLATFORM=cpu`` then selects
it (``verl.plugin.platform.platform_manager._detect_platform_name``). It imports only torch
and verl, which that environment has (`coop_dag/__init__.py` imports nothing else either).

verl 0.9.1 ships nvidia, npu and rocm platforms only; without a platform of its own a CPU
host falls back to ``nvidia`` and asks for NCCL. What this module supplies:

- ``device_name`` ``"cpu"`` and ``current_device()`` ``"cpu"``: verl uses the device id as a
  ``.to()`` target (``verl.utils.fsdp_utils``: ``model.to(device=get_device_id())``), so an
  index ``0`` would mean ``cuda:0``.
- the gloo backend. verl's ``initialize_global_process_group`` builds
  ``f"cpu:gloo,{device}:{backend}"``, i.e. ``cpu:gloo,cpu:gloo`` here, which torch refuses
  (a device type mapped twice); `_init_process_group` is the same function with the
  duplicate dropped, installed over it (``verl.trainer.sft_trainer.run_sft`` imports it at
  call time, so the replacement is what runs).
- a ``torch.cpu``-backed device module with the calls verl makes on ``torch.cuda``
  (``empty_cache``, ``mem_get_info``, ``get_rng_state``, ...) as CPU equivalents or no-ops.

What it does not do: the FSDP engine is registered for cuda/npu only, so the trainer is run
with ``VERL_ENGINE_DEVICE=cuda`` (it selects the engine; the engine then places tensors on
this platform's device, the CPU) -- see `coop_dag.training.verl_config.CPU_ENV`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM = "cpu"
BACKEND = "gloo"


def _meminfo() -> tuple[int, int]:
    """(available, total) bytes of RAM, as ``torch.cuda.mem_get_info`` reports for a GPU."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = values.get("MemTotal", 0)
    return values.get("MemAvailable", total), total


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


# torch.cpu plus what verl calls on torch.cuda (grep of verl 0.9.1: get_torch_device().X)
DEVICE_MODULE = SimpleNamespace(
    **{name: getattr(torch.cpu, name) for name in dir(torch.cpu) if not name.startswith("_")},
)
DEVICE_MODULE.__name__ = "coop_dag.training.verl_cpu_platform.DEVICE_MODULE"
DEVICE_MODULE.is_available = lambda: True
DEVICE_MODULE.current_device = lambda: PLATFORM
DEVICE_MODULE.device_count = lambda: 1
DEVICE_MODULE.set_device = _noop  # one CPU "device" per rank
DEVICE_MODULE.synchronize = _noop
DEVICE_MODULE.empty_cache = _noop
DEVICE_MODULE.ipc_collect = _noop
DEVICE_MODULE.set_per_process_memory_fraction = _noop
DEVICE_MODULE.memory_allocated = _zero
DEVICE_MODULE.memory_reserved = _zero
DEVICE_MODULE.max_memory_allocated = _zero
DEVICE_MODULE.max_memory_reserved = _zero
DEVICE_MODULE.mem_get_info = lambda *_a, **_k: _meminfo()
DEVICE_MODULE.get_device_name = lambda *_a, **_k: "cpu"
DEVICE_MODULE.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
DEVICE_MODULE.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
DEVICE_MODULE.manual_seed = torch.manual_seed
DEVICE_MODULE.manual_seed_all = torch.manual_seed


@PlatformRegistry.register(platform=PLATFORM)
class PlatformCPU(PlatformBase):
    """verl's platform interface on the CPU: device ``cpu``, collectives over gloo."""

    @property
    def device_name(self) -> str:
        return PLATFORM

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # never auto-detected: a CUDA host must not pick the CPU; VERL_PLATFORM=cpu selects it
        return False

    def current_device(self) -> Any:  # verl passes it to .to(): "cpu", not an index
        return PLATFORM

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return BACKEND

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # read by verl's Ray paths only; nothing to hide here

    @contextmanager
    def nvtx_range(self, msg: str):  # type: ignore[override]
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def _init_process_group(timeout_second: int = 36000) -> tuple[int, int, int]:
    """verl's ``initialize_global_process_group`` with one backend entry per device type:
    ``gloo`` when this platform is active (torch rejects ``cpu:gloo,cpu:gloo``), verl's own
    ``cpu:gloo,<device>:<backend>`` otherwise."""
    from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device

    device, backend = get_device_name(), get_nccl_backend()
    spec = BACKEND if device == PLATFORM else f"cpu:gloo,{device}:{backend}"
    torch.distributed.init_process_group(
        backend=spec,
        timeout=timedelta(seconds=timeout_second),
        init_method=os.environ.get("DIST_INIT_METHOD", None),
    )
    local_rank = int(os.environ["LOCAL_RANK"])
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if torch.distributed.is_initialized():
        get_torch_device().set_device(local_rank)
    return local_rank, rank, world_size


def install() -> None:
    """Put `_init_process_group` in place of verl's (idempotent)."""
    import verl.utils.distributed as distributed

    distributed.initialize_global_process_group = _init_process_group


install()
