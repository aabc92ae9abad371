"""The mpi backend's pure parts: mpirun command, custom options, rank shim, ssh configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.control import messages
from launcher.control.messages import MessageError, SshdReady
from launcher.mpi import command as mpi
from launcher.mpi import rank as mpirank
from launcher.mpi import ssh as sshd
from launcher.plan import Backend, HostSlots, JobSpec, World, build

PY = "/venv/bin/python"


def request(**kw: object) -> mpi.MpiRequest:
    base: dict[str, object] = {
        "hosts": (("algo-1", 2), ("algo-2", 2)),
        "program": (PY, "-m", "mpi4py", "train.py", "--epochs", "3"),
        "python": PY,
        "interface": "eth0",
        "ssh_config": "/tmp/job/ssh_config",
    }
    base.update(kw)
    return mpi.MpiRequest(**base)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[str]:
    """Every argument that follows `flag` in argv."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_default_command_has_the_toolkit_flag_set() -> None:
    argv = mpi.command(request())
    head = argv[: argv.index(PY)]
    assert head[:8] == [
        "mpirun",
        "--host",
        "algo-1:2,algo-2:2",
        "-np",
        "4",
        "--allow-run-as-root",
        "--tag-output",
        "-mca",
    ]
    text = " ".join(head)
    for fragment in (
        "-mca btl_tcp_if_include eth0",
        "-mca oob_tcp_if_include eth0",
        "-mca plm_rsh_no_tree_spawn 1",
        "-bind-to none",
        "-map-by slot",
        "-mca pml ob1",
        "-mca btl ^openib",
        "-mca orte_abort_on_non_zero_status 1",
        "-mca btl_vader_single_copy_mechanism none",
        "-mca plm_rsh_agent ssh",
    ):
        assert fragment in text
    assert "--display-map" not in head
    assert head[head.index("plm_rsh_args") + 1] == "-F /tmp/job/ssh_config"
    assert pairs(head, "-x") == [
        "NCCL_DEBUG=WARN",
        "NCCL_SOCKET_IFNAME=eth0",
        "LAUNCHER_MPI_FORWARDED=NCCL_DEBUG,NCCL_SOCKET_IFNAME",
    ]
    # No SM_* and no bare -x NAME: a forwarded value would be the leader's on every host (D2).
    assert not any(x.startswith("SM_") or "=" not in x for x in pairs(head, "-x"))
    assert argv[argv.index(PY) :] == [PY, "-m", "launcher.mpi.rank", *request().program]


def test_single_host_needs_no_ssh_and_no_interface() -> None:
    argv = mpi.command(request(hosts=(("localhost", 3),), ssh_config="", interface=""))
    assert argv[1:5] == ["--host", "localhost:3", "-np", "3"]
    assert "plm_rsh_agent" not in argv and "btl_tcp_if_include" not in argv
    assert "NCCL_SOCKET_IFNAME=eth0" not in argv


def test_num_processes_and_uneven_hosts() -> None:
    argv = mpi.command(request(hosts=(("a", 4), ("b", 1)), num_processes=3))
    assert argv[1:5] == ["--host", "a:4,b:1", "-np", "3"]


def test_custom_options_replace_defaults_instead_of_appending() -> None:
    custom = (
        "-mca btl_tcp_if_include ib0 --bind-to core -x NCCL_DEBUG=INFO -np 3 "
        "--mca pml ucx -x FOO='a b' --display-map"
    )
    argv = mpi.command(request(custom_options=custom))
    head = argv[: argv.index(PY)]
    assert head.count("btl_tcp_if_include") == 1
    assert head[head.index("btl_tcp_if_include") + 1] == "ib0"
    assert "oob_tcp_if_include" in head  # not named by the user: kept
    assert "-bind-to" not in head and head[head.index("--bind-to") + 1] == "core"
    assert pairs(head, "-np") == ["3"] and "4" not in pairs(head, "-np")
    assert head.count("pml") == 1 and head[head.index("pml") + 1] == "ucx"
    xs = pairs(head, "-x")
    assert "NCCL_DEBUG=WARN" not in xs and "NCCL_DEBUG=INFO" in xs
    assert "FOO=a b" in xs  # shlex: the quotes group, and are removed
    assert xs[-1] == "LAUNCHER_MPI_FORWARDED=FOO,NCCL_DEBUG,NCCL_SOCKET_IFNAME"
    assert "--display-map" in head


def test_conflicting_options_drop_ours() -> None:
    argv = mpi.command(request(custom_options="-mca btl_tcp_if_exclude lo,docker0 --npernode 1"))
    assert "btl_tcp_if_include" not in argv and "btl_tcp_if_exclude" in argv
    assert "-map-by" not in argv and "--npernode" in argv


def test_toolkit_nccl_debug_pseudo_option_and_aliases() -> None:
    argv = mpi.command(request(custom_options="--NCCL_DEBUG INFO -H x:1 -n 1"))
    assert [x for x in pairs(argv, "-x") if x.startswith("NCCL_DEBUG")] == ["NCCL_DEBUG=INFO"]
    assert argv.count("--host") == 0 and pairs(argv, "-H") == ["x:1"]
    assert pairs(argv, "-n") == ["1"] and "-np" not in argv


def test_unknown_options_take_the_words_that_follow() -> None:
    options = mpi.parse_options("--report-bindings --output-filename /tmp/o --timeout 30")
    assert [o.argv for o in options] == [
        ("--report-bindings",),
        ("--output-filename", "/tmp/o"),
        ("--timeout", "30"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stray", "unexpected argument 'stray'"),
        ("-mca btl", "needs 2 argument"),
        ("-x", "needs 1 argument"),
        ("-x 'unterminated", "cannot split"),
    ],
)
def test_bad_custom_options_are_rejected(text: str, message: str) -> None:
    with pytest.raises(mpi.OptionsError, match=message):
        mpi.parse_options(text)


def test_efa_instances_get_the_efa_variables() -> None:
    xs = pairs(mpi.command(request(instance_type="ml.p4d.24xlarge")), "-x")
    assert {"FI_PROVIDER=efa", "NCCL_PROTO=simple", "FI_EFA_USE_DEVICE_RDMA=1"} <= set(xs)
    xs = pairs(mpi.command(request(instance_type="ml.g5.48xlarge")), "-x")
    assert "FI_PROVIDER=efa" in xs and "FI_EFA_USE_DEVICE_RDMA=1" not in xs


def test_whitespace_in_the_ssh_config_path_is_refused() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        mpi.command(request(ssh_config="/tmp/my dir/ssh_config"))


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([PY, "--", "train.py", "--lr", "1"], [PY, "-m", "mpi4py", "train.py", "--lr", "1"]),
        ([PY, "-m", "pkg.main", "-x"], [PY, "-m", "mpi4py", "-m", "pkg.main", "-x"]),
        ([PY, "train.py"], [PY, "-m", "mpi4py", "train.py"]),
        (["/bin/sh", "-c", "s", "./run.sh"], ["/bin/sh", "-c", "s", "./run.sh"]),
        (["/other/python", "--", "t.py"], ["/other/python", "--", "t.py"]),
    ],
)
def test_python_entry_points_run_through_mpi4py(command: list[str], expected: list[str]) -> None:
    assert list(mpi.mpi4py_program(command, PY)) == expected


def test_root_cause_names_the_failed_rank_and_its_host() -> None:
    stderr = (
        "[1,2]<stderr>:Traceback (most recent call last):\n"
        '[1,2]<stderr>:  File "t.py", line 1, in <module>\n'
        "[1,2]<stderr>:ValueError: bad[1,2]<stderr>:\n"
        "[1,0]<stderr>:ValueError: not me\n"
        "-----\nmpirun detected that one or more processes exited with non-zero status, thus"
        " causing\nthe job to be terminated. The first process to do so was:\n\n"
        "  Process name: [[123,1],2]\n  Exit code:    4\n-----\n"
    )
    hosts = [("algo-1", 2), ("algo-2", 2)]
    assert mpi.root_cause(stderr, hosts) == "rank 2 on algo-2 exited with code 4: ValueError: bad"
    aborted = "MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD\nwith errorcode 7."
    assert mpi.root_cause(aborted, hosts) == "rank 1 on algo-1 called MPI_Abort with error code 7"
    killed = "mpirun noticed that process rank 3 with PID 0 on node algo-2 exited on signal 9 (K)."
    assert mpi.root_cause(killed, hosts) == "rank 3 on algo-2 was killed by SIGKILL (exit 137)"
    assert mpi.root_cause("ORTE was unable to reliably start one or more daemons", hosts) is None


def _world(node_rank: int) -> World:
    hosts = (HostSlots("algo-1", 2, "10.0.0.1"), HostSlots("algo-2", 1))
    return World(hosts, node_rank, "10.0.0.1", 29500, "run-1")


def test_host_payload_carries_this_hosts_values_and_no_rank_variables() -> None:
    env = {"SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "0", "PYTHONPATH": "/code"}
    job = JobSpec(("python", "t.py"), "/code", Backend.MPI, env=env, interface="eth0")
    base = {"PATH": "/bin", "LAUNCHER_JOB_TOKEN": "secret", "HOME": "/root"}
    payload = mpi.host_payload(build(job, _world(1), base, cpu_count=8))
    assert payload["host"] == "algo-2" and payload["node_rank"] == 1
    assert payload["num_nodes"] == 2 and payload["master_addr"] == "10.0.0.1"
    assert payload["master_port"] == 29500 and payload["run_id"] == "run-1"
    host_env = payload["env"]
    assert host_env["SM_CURRENT_HOST"] == "algo-2" and host_env["PATH"] == "/bin"
    assert host_env["OMP_NUM_THREADS"] == "8" and host_env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "LAUNCHER_JOB_TOKEN"} & set(
        host_env
    )


def test_shim_gives_the_rank_its_hosts_values_and_the_torch_contract() -> None:
    environ = {
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "3",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
        "SM_CURRENT_HOST": "algo-1",  # what a bare -x would have forwarded: must not win
        "NCCL_DEBUG": "INFO",
        "LAUNCHER_MPI_FORWARDED": "NCCL_DEBUG",
        "PATH": "/usr/bin",
    }
    payload = {
        "host": "algo-2",
        "node_rank": 1,
        "num_nodes": 2,
        "master_addr": "10.0.0.1",
        "master_port": 29500,
        "run_id": "run-1",
        "env": {"SM_CURRENT_HOST": "algo-2", "NCCL_DEBUG": "WARN", "PATH": "/venv/bin:/bin"},
    }
    env = mpirank.rank_environment(environ, payload)
    assert env["SM_CURRENT_HOST"] == "algo-2" and env["PATH"] == "/venv/bin:/bin"
    assert env["NCCL_DEBUG"] == "INFO"  # forwarded by mpirun with -x: the job's choice
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == (
        "2",
        "0",
        "3",
        "1",
    )
    assert (env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == ("1", "2")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29500")
    assert env["LAUNCHER_HOST"] == "algo-2" and env["LAUNCHER_BACKEND"] == "mpi"
    assert "TORCHELASTIC_ERROR_FILE" not in env
    assert env["OMPI_COMM_WORLD_RANK"] == "2"


def test_shim_without_payload_keeps_master_from_the_environment() -> None:
    environ = {"PMI_RANK": "0", "PMI_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    env = mpirank.rank_environment(environ, {})
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "2", "h")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "not started by mpirun"),
        ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "not an integer"),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "2"}, "outside its world"),
    ],
)
def test_shim_refuses_a_broken_mpi_environment(environ: dict[str, str], message: str) -> None:
    with pytest.raises(mpirank.ShimError, match=message):
        mpirank.rank_environment(environ, {})


def test_shim_main_reports_an_unreadable_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.json").write_text("[1]")
    monkeypatch.setenv("LAUNCHER_MPI_ENV", str(tmp_path / "p.json"))
    assert mpirank.main(["true"]) == 2
    assert "does not hold a JSON object" in capsys.readouterr().err
    monkeypatch.setenv("LAUNCHER_MPI_ENV", str(tmp_path / "missing.json"))
    assert mpirank.main(["true"]) == 2


def test_sshd_and_client_configs_are_key_only_and_private(tmp_path: Path) -> None:
    text = sshd.sshd_config(tmp_path, "10.0.0.2", 2222, "root")
    lines = set(text.splitlines())
    for line in (
        "Port 2222",
        "ListenAddress 10.0.0.2",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "AllowUsers root",
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
        f"PidFile {tmp_path / 'sshd.pid'}",
        f"SetEnv LAUNCHER_MPI_ENV={tmp_path / 'host-env.json'}",
    ):
        assert line in lines
    peer = sshd.SshPeer("algo-2", "10.0.0.2", 2222, "ssh-ed25519 AAAAC3Nz")
    client = sshd.client_config(tmp_path, [peer])
    assert "Host algo-2\n  HostName 10.0.0.2\n  Port 2222\n  HostKeyAlias algo-2\n" in client
    assert "StrictHostKeyChecking yes" in client and "BatchMode yes" in client
    assert f"UserKnownHostsFile {tmp_path / 'known_hosts'}" in client
    assert sshd.known_hosts([peer]) == "algo-2 ssh-ed25519 AAAAC3Nz\n"


@pytest.mark.parametrize(
    "message",
    [
        {"addr": "10.0.0.2", "port": 0, "hostkey": "ssh-ed25519 AAAA"},
        {"addr": "not-an-ip", "port": 22, "hostkey": "ssh-ed25519 AAAA"},
        {"addr": "10.0.0.2", "port": 22, "hostkey": "ssh-ed25519 AAAA\nHost *"},
        {"addr": "10.0.0.2", "port": "22", "hostkey": "ssh-ed25519 AAAA"},
    ],
)
def test_malformed_sshd_reports_are_refused(message: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        messages.decode({"type": "sshd", **message})


def test_a_valid_sshd_report_round_trips() -> None:
    peer = sshd.SshPeer("algo-2", "10.0.0.2", 2222, "ssh-ed25519 AAAAC3Nz+/=")
    report = messages.decode(json.loads(json.dumps(messages.encode(peer.message()))))
    assert isinstance(report, SshdReady)
    assert sshd.peer_from_message("algo-2", report) == peer
    with pytest.raises(ValueError, match="cannot be used with ssh"):
        sshd.peer_from_message("-oProxyCommand=x", report)
