"""A Ray cluster of two nodes on this machine (two raylets, one CPU each), started once per test
session on the xdist worker that runs the "ray" group, shared by the embedding and analysis tests."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


# --- --------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def cluster():
    """A Ray cluster of two nodes (two raylets, one CPU each), each a `ray start --block` process
    group of its own, run from its own empty folder with its own temp dir, no PYTHONPATH and no
    hub-offline variables (the runtime_env is to bring those). Yields (address, root): node i
    keeps its files under root/t{i}. Stopped at the end of the session by killing those two process
    groups, not `ray stop`, which would stop every Ray instance on the machine."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    # short: Ray's unix sockets live under the temp dir (paths are limited to 107 characters)
    root = Path(tempfile.mkdtemp(prefix="cr2n-", dir="/tmp"))
    from curation.embed_ray import FORWARD_ENV

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", *FORWARD_ENV)}
    try:  # the nodes authenticate as this process will (a token only if Ray turned it on here)
        from ray._raylet import AuthenticationMode, get_authentication_mode

        env["RAY_AUTH_MODE"] = "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"
    except ImportError:
        pass
    saved_address = os.environ.pop("RAY_ADDRESS", None)
    ray_cli = Path(sys.executable).with_name("ray")
    procs, logs = [], []

    def start(i, *args):
        p = _free_ports(6)
        (root / f"n{i}").mkdir()
        logs.append(open(root / f"n{i}.log", "w"))  # noqa: SIM115 (closed at teardown)
        cmd = [str(ray_cli), "start", *args, f"--temp-dir={root / f't{i}'}", "--num-cpus=1", "--num-gpus=0",
               "--block", "--disable-usage-stats", "--include-log-monitor=false",
               "--object-store-memory=100000000", f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
               f"--metrics-export-port={p[2]}", f"--dashboard-agent-listen-port={p[3]}",
               f"--dashboard-agent-grpc-port={p[4]}", f"--runtime-env-agent-port={p[5]}"]
        procs.append(subprocess.Popen(cmd, cwd=root / f"n{i}", env=env, start_new_session=True,
                                      stdout=logs[-1], stderr=subprocess.STDOUT))

    def wait(what, ok, timeout=60):
        t0 = time.time()
        while not ok():
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            if dead or time.time() - t0 > timeout:
                tails = "\n".join((root / f"n{i}.log").read_text()[-2000:] for i in range(len(procs)))
                pytest.fail(f"two-node Ray cluster: {what} failed (nodes exited: {dead})\n{tails}")
            time.sleep(0.2)

    try:
        gcs, dash = _free_ports(2)
        start(0, "--head", f"--port={gcs}", "--include-dashboard=false", f"--dashboard-port={dash}")
        address_file = root / "t0" / "ray_current_cluster"  # written by `ray start --head` once it is up
        wait("the head node", lambda: address_file.exists() and address_file.read_text().strip())
        address = address_file.read_text().strip()
        start(1, f"--address={address}")
        yield address, root
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the group of this `ray start`: its raylet, agents, workers
            except ProcessLookupError:
                pass
            p.wait()
        for f in logs:
            f.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        if saved_address is not None:
            os.environ["RAY_ADDRESS"] = saved_address


