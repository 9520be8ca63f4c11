"""A real SLURM cluster on this machine for the tests: Debian's slurm-wlm (22.05) with munge, slurmctld and
four slurmd daemons (nodes n1-n4, all at 127.0.0.1, 32 CPUs each as declared, no GPUs), every file
under a temporary folder, every port free, no accounting.

Started as root (CI and this machine run as root); `.ci/run` installs the packages and sets
CRN_REQUIRE_SLURM=1, which turns a missing SLURM or munge into a failure instead of a skip. The daemons run
in the foreground as children of the test process and are stopped (jobs cancelled first) whatever
happens, by `stop()` and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "srun")
NODES = ("n1", "n2", "n3", "n4")


def missing() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return f"SLURM or munge is not installed (no {', '.join(absent)}; `apt-get install slurm-wlm munge`)"
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


CONF = """ClusterName=crntest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
"""


class Cluster:
    """``env`` is what a client (sbatch, scontrol) needs: SLURM_CONF pointing at this cluster."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.root / "slurm.conf"))

    def start(self, timeout: float = 60) -> "Cluster":
        atexit.register(self.stop)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        root = self.root
        for folder in ("state", "spool"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        nodes = "".join(f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 Port={port} "
                        f"CPUs=32 State=UNKNOWN\n" for name, port in zip(NODES, node_ports))
        partition = f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP\n"
        (root / "slurm.conf").write_text(CONF.format(root=root, ctld_port=ctld_port) + nodes + partition)
        log = open(root / "daemons.log", "ab")
        self._spawn([_exe("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket",
                     f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"], log)
        self._wait(lambda: (root / "munge.socket").exists(), timeout, "munged did not create its socket")
        self._spawn([_exe("slurmctld"), "-D", "-f", str(root / "slurm.conf")], log)
        for name in NODES:
            self._spawn([_exe("slurmd"), "-D", "-N", name, "-f", str(root / "slurm.conf")], log)
        self._wait(self._all_idle, timeout, "the nodes did not become idle")

    def _spawn(self, cmd: list[str], log) -> None:
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True))

    def _all_idle(self) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{self.logs()}")
        out = subprocess.run([_exe("sinfo"), "-h", "-o", "%D %t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.split() == [str(len(NODES)), "idle"]

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"test SLURM cluster: {what} within {timeout:g} s:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def sbatch(self, args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        """`sbatch ARGS` in ``cwd`` (--wait blocks until the job ends and returns its exit code); on timeout
        every job is cancelled and the timeout raised."""
        try:
            return subprocess.run([_exe("sbatch"), *args], cwd=cwd, env={**self.env, **(env or {})},
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel_all()
            raise

    def submit(self, args: list[str], cwd: Path, env: dict | None = None) -> str:
        """`sbatch ARGS` in ``cwd`` (as the docs submit it, without --wait); the job's id."""
        result = subprocess.run([_exe("sbatch"), "--parsable", *args], cwd=cwd, env={**self.env, **(env or {})},
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"sbatch {' '.join(args)} refused: {result.stderr}")
        return result.stdout.strip().split(";")[0]

    def wait(self, job: str, timeout: float = 300) -> tuple[str, int]:
        """(final state, exit status) of a job, polled every half second (`sbatch --wait` sleeps 2, 8, then
        32 s between polls, which would make a 10 s job take 42 s); on timeout the job is cancelled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([_exe("scontrol"), "show", "job", "-o", job], env=self.env, capture_output=True, text=True)
            fields = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
            if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return fields["JobState"], int(fields.get("ExitCode", "0:0").split(":")[0])
            time.sleep(0.5)
        subprocess.run([_exe("scancel"), job], env=self.env, capture_output=True)
        raise TimeoutError(f"job {job} still running after {timeout:g} s:\n{self.logs()}")

    def cancel_all(self, timeout: float = 30) -> None:
        subprocess.run([_exe("scancel"), "--user", "root"], env=self.env, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([_exe("squeue"), "-h"], env=self.env, capture_output=True, text=True)
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel every job, then stop every daemon (SIGTERM, then SIGKILL), each in its own process group."""
        if not self.procs:
            return
        if all(p.poll() is None for p in self.procs):
            self.cancel_all()
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = []


def _signal_group(proc: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(proc.pid, number)
    except (ProcessLookupError, PermissionError):
        pass
