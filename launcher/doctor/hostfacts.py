"""Facts about this host for `launcher doctor`, gathered without importing heavy modules.

NVML (driver, CUDA version, GPUs) through nvidia-ml-py, imported lazily; network interfaces
(`net.read_interfaces`: ioctls and /proc, no process started); and the fixed probe programs
`doctor` runs in child processes for torch, Horovod and mpi4py, which the launcher itself never
imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher import gpus

PROBE_TIMEOUT_S = 60.0  # a cold `import torch` from a slow disk takes tens of seconds
# Fixed programs, never built from user data. Each prints one JSON object on its last line;
# {"error": ..., "missing": true} when the module itself is not installed.
_PROBE = """import json
try:
{body}
except Exception as e:
    out = {{"error": f"{{type(e).__name__}}: {{e}}", "missing": getattr(e, "name", "") == {name!r}}}
print(json.dumps(out))
"""
TORCH_PROBE = _PROBE.format(
    name="torch",
    body="""    import importlib  # the launcher never imports torch: this runs in a child process
    torch = importlib.import_module("torch")
    dist = importlib.import_module("torch.distributed")
    out = {"version": torch.__version__, "cuda": torch.version.cuda,
           "gpus": torch.cuda.device_count(), "nccl_version": "",
           "nccl": dist.is_available() and dist.is_nccl_available(),
           "gloo": dist.is_available() and dist.is_gloo_available()}
    if out["nccl"] and out["cuda"]:
        out["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    try:  # a world of one: proves gloo can pick an interface and run a collective
        if out["gloo"]:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            dist.all_reduce(torch.ones(1))
            dist.destroy_process_group()
    except Exception as e:
        out["gloo_error"] = f"{type(e).__name__}: {e}\"""",
)
HOROVOD_PROBE = _PROBE.format(
    name="horovod",
    body="""    import pathlib, horovod
    root = pathlib.Path(horovod.__file__).parent
    out = {"version": horovod.__version__, "frameworks": sorted(
        d.name for d in root.iterdir() if d.is_dir() and any(d.glob("mpi_lib*")))}
    try:
        import horovod.torch as hvd
        out.update(gloo=hvd.gloo_built(), mpi=hvd.mpi_built(), nccl=bool(hvd.nccl_built()))
    except Exception as e:
        out["torch_error"] = f"{type(e).__name__}: {e}"
    try:  # the horovod backend's leader hosts this server
        from horovod.runner.http.http_server import RendezvousServer
    except Exception as e:
        out["rendezvous_error"] = f"{type(e).__name__}: {e}\"""",
)
MPI4PY_PROBE = _PROBE.format(
    name="mpi4py",
    body="""    import mpi4py
    mpi4py.rc.initialize = mpi4py.rc.finalize = False  # the version needs no MPI_Init
    from mpi4py import MPI
    out = {"version": mpi4py.__version__,
           "library": MPI.Get_library_version().split(",")[0].strip()}""",
)


@dataclass(frozen=True, slots=True)
class GpuFacts:
    error: str  # why NVML gave nothing ("" when it answered)
    driver: str = ""
    cuda: str = ""
    devices: tuple[gpus.GpuInfo, ...] = ()


def nvml_facts() -> GpuFacts:
    """Driver, CUDA driver version and every GPU, from NVML; `error` says why not (CPU host)."""
    try:
        import pynvml  # noqa: PLC0415 - lazy: a CPU host never pays for it
    except ImportError as e:
        return GpuFacts(f"nvidia-ml-py is not installed ({e})")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return GpuFacts(f"no NVML ({e})")
    try:  # NVML counts its inits: the nested init/shutdown of PynvmlProbe is fine
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())  # 12040 is CUDA 12.4
        devices = tuple(gpus.PynvmlProbe().devices())
    except (pynvml.NVMLError, gpus.NvmlUnavailable) as e:
        return GpuFacts(f"NVML failed ({e})")
    finally:
        pynvml.nvmlShutdown()
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    return GpuFacts("", driver, f"{cuda // 1000}.{cuda % 1000 // 10}", devices)
