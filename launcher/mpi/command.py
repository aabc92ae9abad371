"""The `mpi` backend's command line and per-host rank environment. Pure: no I/O, no environ.

`command(request)` builds the leader's single `mpirun` argv with the toolkit's flag set
(sagemaker-contract.md §10.5): `--host h1:P,h2:P -np N --allow-run-as-root --tag-output`, the
interface MCA parameters, `plm_rsh_no_tree_spawn`, `-bind-to none -map-by slot`, `pml ob1`,
`btl ^openib`, `orte_abort_on_non_zero_status 1`, `btl_vader_single_copy_mechanism none`, and
`-x NCCL_SOCKET_IFNAME/NCCL_DEBUG` (plus the EFA variables for EFA instance types). Two
deliberate differences: `--display-map` is off (it floods the log; add it as a custom option),
and no `SM_*`/`PYTHONPATH`/`PATH` is forwarded with `-x`, because a forwarded value is the
leader's value on every host (defect D2). Instead every rank starts through the shim
`python -m launcher.mpi.rank`, which loads its own host's environment (see `host_payload`).

Custom options (`sagemaker_mpi_custom_mpi_options`) are split with shlex, so quoting works, and
each option *replaces* a default with the same key instead of being appended behind it (toolkit
issue #70): `-mca btl_tcp_if_include ib0` replaces our `btl_tcp_if_include`, `--bind-to core`
replaces `-bind-to none`, `-x NCCL_DEBUG=INFO` replaces ours, `-np 3` replaces ours;
`btl_tcp_if_exclude` drops our `btl_tcp_if_include` (Open MPI refuses both), and `--npernode`
style mapping drops our `-map-by`. The toolkit's `--NCCL_DEBUG LEVEL` is still understood.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from launcher import contract
from launcher.errors import signal_exit_code, signal_name
from launcher.mpi.rank import FORWARDED_VAR
from launcher.plan import LaunchPlan
from launcher.report import exception_line

SHIM_MODULE = "launcher.mpi.rank"
DEFAULT_NCCL_DEBUG = "WARN"  # the toolkit's INFO prints pages per GPU; INFO is one option away

# sagemaker-contract.md §10.5: instance types that get the EFA variables.
EFA_INSTANCES = frozenset(
    {
        "ml.g4dn.8xlarge",
        "ml.g4dn.12xlarge",
        "ml.g5.48xlarge",
        "ml.p3dn.24xlarge",
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.p5e.48xlarge",
        "ml.trn1.32xlarge",
        "ml.p6e-gb200.36xlarge",
    }
)
EFA_RDMA_INSTANCES = frozenset(
    {
        "ml.p4d.24xlarge",
        "ml.p4de.24xlarge",
        "ml.p5.48xlarge",
        "ml.p5e.48xlarge",
        "ml.trn1.32xlarge",
        "ml.p6e-gb200.36xlarge",
    }
)

# Options whose key is an alias of another, so that a custom option replaces our default.
_ALIASES = {
    "n": "np",
    "c": "np",
    "H": "host",
    "hostfile": "host",
    "machinefile": "host",
    "default-hostfile": "host",
    "gmca": "mca",
}
# Open MPI options known to take no argument (others are recognised by their arguments).
_FLAGS = frozenset(
    {
        "allow-run-as-root",
        "tag-output",
        "display-map",
        "display-devel-map",
        "display-allocation",
        "do-not-launch",
        "oversubscribe",
        "nooversubscribe",
        "report-bindings",
        "timestamp-output",
        "merge-stderr-to-stdout",
        "quiet",
        "q",
        "v",
        "verbose",
        "use-hwthread-cpus",
        "pernode",
        "noprefix",
        "get-stack-traces",
        "report-state-on-timeout",
        "enable-recovery",
        "disable-recovery",
    }
)
# A custom option with the key on the left removes our default with the key on the right.
_CONFLICTS = {
    "mca:btl_tcp_if_exclude": "mca:btl_tcp_if_include",
    "mca:oob_tcp_if_exclude": "mca:oob_tcp_if_include",
    "npernode": "map-by",
    "pernode": "map-by",
    "npersocket": "map-by",
    "N": "map-by",
}


class OptionsError(ValueError):
    """The custom MPI options cannot be parsed; the message says which token."""


@dataclass(frozen=True, slots=True)
class Option:
    """One mpirun option with its arguments; `key` decides what replaces what."""

    key: str
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MpiRequest:
    """Everything `command` needs. `hosts` are (name, slots) in node order, leader first."""

    hosts: tuple[tuple[str, int], ...]
    program: tuple[str, ...]  # what each rank runs, after the shim (see `mpi4py_program`)
    python: str  # the interpreter that runs the shim on every host
    interface: str = ""  # "" lets Open MPI choose (one host, or no interface configured)
    num_processes: int | None = None  # -np; default: every slot of every host
    custom_options: str = ""
    ssh_config: str = ""  # "" for a single host: mpirun needs no ssh then
    instance_type: str = ""
    nccl_debug: str = DEFAULT_NCCL_DEBUG
    mpirun: str = "mpirun"


def parse_options(text: str) -> list[Option]:
    """Custom options as `Option`s, in order. Raises `OptionsError` on a stray argument."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise OptionsError(f"cannot split {text!r}: {e}") from None
    options: list[Option] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-") or token in ("-", "--"):
            raise OptionsError(f"unexpected argument {token!r}: every item must be an option")
        name = token.lstrip("-")
        name = _ALIASES.get(name, name)
        if name == "NCCL_DEBUG":  # the toolkit's own pseudo-option
            (level,), i = _args(tokens, i, 1, token)
            options.append(Option("x:NCCL_DEBUG", ("-x", f"NCCL_DEBUG={level}")))
        elif name == "mca":
            (param, value), i = _args(tokens, i, 2, token)
            options.append(Option(f"mca:{param}", (token, param, value)))
        elif name == "x":
            (assignment,), i = _args(tokens, i, 1, token)
            options.append(Option(f"x:{assignment.split('=', 1)[0]}", (token, assignment)))
        elif name in _FLAGS:
            options.append(Option(name, (token,)))
            i += 1
        else:  # an option we do not know: its arguments are the words that follow it
            j = i + 1
            while j < len(tokens) and not tokens[j].startswith("-"):
                j += 1
            options.append(Option(name, tuple(tokens[i:j])))
            i = j
    return options


def _args(tokens: list[str], i: int, n: int, token: str) -> tuple[list[str], int]:
    values = tokens[i + 1 : i + 1 + n]
    if len(values) < n:
        raise OptionsError(f"{token} needs {n} argument(s)")
    return values, i + 1 + n


def defaults(request: MpiRequest) -> list[Option]:
    """Our default options (the toolkit's flag set, see the module docstring)."""
    hosts = ",".join(f"{name}:{slots}" for name, slots in request.hosts)
    np = request.num_processes or sum(slots for _, slots in request.hosts)
    options = [
        Option("host", ("--host", hosts)),
        Option("np", ("-np", str(np))),
        Option("allow-run-as-root", ("--allow-run-as-root",)),
        Option("tag-output", ("--tag-output",)),
    ]
    if request.interface:
        for param in ("btl_tcp_if_include", "oob_tcp_if_include"):
            options.append(Option(f"mca:{param}", ("-mca", param, request.interface)))
    for param, value in (
        ("plm_rsh_no_tree_spawn", "1"),
        ("pml", "ob1"),
        ("btl", "^openib"),
        ("orte_abort_on_non_zero_status", "1"),
        ("btl_vader_single_copy_mechanism", "none"),
    ):
        options.append(Option(f"mca:{param}", ("-mca", param, value)))
    options += [Option("bind-to", ("-bind-to", "none")), Option("map-by", ("-map-by", "slot"))]
    if request.ssh_config:
        if any(c.isspace() for c in request.ssh_config):
            # Open MPI splits plm_rsh_args on whitespace: such a path cannot be passed.
            raise ValueError(f"ssh config path {request.ssh_config!r} contains whitespace")
        options.append(Option("mca:plm_rsh_agent", ("-mca", "plm_rsh_agent", "ssh")))
        options.append(
            Option("mca:plm_rsh_args", ("-mca", "plm_rsh_args", f"-F {request.ssh_config}"))
        )
    env = {"NCCL_DEBUG": request.nccl_debug}
    if request.interface:
        env["NCCL_SOCKET_IFNAME"] = request.interface
    if request.instance_type in EFA_INSTANCES:
        env |= {"FI_PROVIDER": "efa", "NCCL_PROTO": "simple"}
    if request.instance_type in EFA_RDMA_INSTANCES:
        env["FI_EFA_USE_DEVICE_RDMA"] = "1"
    options += [Option(f"x:{k}", ("-x", f"{k}={v}")) for k, v in env.items()]
    return options


def merge(ours: Sequence[Option], custom: Sequence[Option]) -> list[Option]:
    """Our options minus those a custom option replaces, then the custom ones (last wins)."""
    latest = {option.key: option for option in custom}
    dropped = set(latest) | {_CONFLICTS[k] for k in latest if k in _CONFLICTS}
    kept = [o for o in ours if o.key not in dropped]
    return kept + [o for o in custom if latest[o.key] is o]


def command(request: MpiRequest) -> list[str]:
    """The full mpirun argv. Raises `OptionsError` for unparsable custom options."""
    options = merge(defaults(request), parse_options(request.custom_options))
    forwarded = sorted({o.key[2:] for o in options if o.key.startswith("x:")})
    argv = [request.mpirun]
    for option in options:
        argv += option.argv
    argv += ["-x", f"{FORWARDED_VAR}={','.join(forwarded)}"]
    return [*argv, request.python, "-m", SHIM_MODULE, *request.program]


def mpi4py_program(command: Sequence[str], python: str) -> tuple[str, ...]:
    """Run a Python entry point through `python -m mpi4py`, as the toolkit does, so that an
    uncaught exception aborts the whole MPI job instead of hanging its peers. Other commands
    (shell commands, executables) are returned unchanged."""
    argv = list(command)
    if len(argv) < 2 or argv[0] != python:
        return tuple(argv)
    if argv[1] == "--":  # python -- script args
        return (python, "-m", "mpi4py", *argv[2:])
    if argv[1] == "-m":  # python -m module args
        return (python, "-m", "mpi4py", *argv[1:])
    if not argv[1].startswith("-"):  # python script args
        return (python, "-m", "mpi4py", *argv[1:])
    return tuple(argv)


# What the shim sets per rank; never part of a host's payload.
PER_RANK_VARS = frozenset(contract.WORLD_OF_ONE.torch_env()) | {"LAUNCHER_JOB_TOKEN"}


def host_payload(plan: LaunchPlan) -> dict[str, Any]:
    """This host's rank environment for the shim: the environment its ranks would get under the
    torch backend (its own SM_* values, PYTHONPATH, OMP_NUM_THREADS, NCCL/GLOO interface and its
    own inherited variables) minus the per-rank variables, plus the world facts the shim needs.
    The job token is left out: ranks have no use for it."""
    world = plan.world
    env = plan.full_env(plan.ranks[0]) if plan.ranks else dict(plan.base_env)
    return {
        "host": world.host.name,
        "node_rank": world.node_rank,
        "num_nodes": len(world.hosts),
        "master_addr": world.master_addr,
        "master_port": world.master_port,
        "run_id": world.run_id,
        "env": {k: v for k, v in env.items() if k not in PER_RANK_VARS},
    }


def rank_host(rank: int, hosts: Sequence[tuple[str, int]]) -> str:
    """The host of `rank` under `-map-by slot` (contiguous ranks per host), or "" if none."""
    for name, slots in hosts:
        if rank < slots:
            return name
        rank -= slots
    return ""


_FIRST_FAILED = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(-?\d+)")
_SIGNALLED = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)")
_ABORTED = re.compile(
    r"MPI_ABORT was invoked on rank (\d+) in communicator \S+\s+with errorcode (-?\d+)"
)
_TAGGED = re.compile(r"^\[\d+,(\d+)\]<stderr>:(.*)$")
_TAG = re.compile(r"\[\d+,\d+\]<std(?:out|err)>:")


def root_cause(stderr: str, hosts: Sequence[tuple[str, int]]) -> str | None:
    """The root-cause line of a failed mpirun from its stderr (`--tag-output`), naming the
    first failed rank, its host, how it ended and its exception line; None when mpirun did not
    say which rank failed (it failed to start, or was stopped)."""
    if found := _FIRST_FAILED.search(stderr):
        rank, how = int(found.group(1)), f"exited with code {found.group(2)}"
    elif found := _ABORTED.search(stderr):
        rank, how = int(found.group(1)), f"called MPI_Abort with error code {found.group(2)}"
    elif found := _SIGNALLED.search(stderr):
        rank, sig = int(found.group(1)), int(found.group(2))
        how = f"was killed by {signal_name(sig)} (exit {signal_exit_code(sig)})"
    else:
        return None
    # --tag-output garbles a line that reached mpirun in two reads ("text[1,1]<stderr>:"):
    # tags inside a line are dropped.
    own = [
        _TAG.sub("", m.group(2))
        for line in stderr.splitlines()
        if (m := _TAGGED.match(line)) and int(m.group(1)) == rank
    ]
    message = exception_line("\n".join(own))
    where = f" on {host}" if (host := rank_host(rank, hosts)) else ""
    text = f"rank {rank}{where} {how}"
    return f"{text}: {message}" if message else text
