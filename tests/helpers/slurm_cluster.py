"""A real single-node SLURM on localhost for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm and
munge, each started in the foreground by this module (so its pid is ours) with a generated configuration in a
private folder, and stopped by pid. Clients find it through SLURM_CONF (see `env`).

    python tests/slurm_cluster.py /tmp/slurm     # bring one up by hand (Ctrl-C stops it)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sacct", "srun", "scancel")


def unavailable_reason() -> str | None:
    """Why SLURM cannot be started here, or None."""
    missing = [cmd for cmd in DAEMONS + CLIENTS[:3]
               if shutil.which(cmd) is None and not Path("/usr/sbin", cmd).exists()]
    if missing:
        return f"SLURM not installed (missing {missing}); install Debian's slurm-wlm and munge"
    if os.geteuid() != 0:
        return "slurmd must run as root to launch jobs (this process is not root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(cmd: str) -> str:
    return shutil.which(cmd) or str(Path("/usr/sbin", cmd))


class SlurmCluster:
    """One node named after this host, all its CPUs, one partition `debug`; requeue allowed. With `nodes=k > 1`:
    k nodes n1..nk on this host (k slurmd processes, each on its own port, the CPUs split between them), for
    multi-node jobs."""

    def __init__(self, root: Path, nodes: int = 1):
        self.nodes = nodes
        self.root = Path(root).resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, squeue, ...) to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(f"""\
ClusterName=lsde-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}{'/%n' if self.nodes > 1 else ''}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / ('slurmd-%n.pid' if self.nodes > 1 else 'slurmd.pid')}
SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.root / 'log' / ('slurmd-%n.log' if self.nodes > 1 else 'slurmd.log')}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
{'SlurmdParameters=config_overrides' if self.nodes > 1 else ''}
{self._node_lines(memory_mb)}
""")

    def _node_lines(self, memory_mb: int) -> str:
        if self.nodes == 1:
            return (f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN\n"
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO")
        cpus = max(2, self.cpus // self.nodes)  # at least 2 per node (config_overrides: more than the host has)
        lines = [f"NodeName=n{i + 1} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={cpus} "
                 f"RealMemory={memory_mb // self.nodes} State=UNKNOWN" for i in range(self.nodes)]
        return "\n".join([*lines, f"PartitionName=debug Nodes=n[1-{self.nodes}] Default=YES MaxTime=INFINITE "
                                   "State=UP OverSubscribe=NO"])

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        self._write_config()
        log = open(self.root / "log" / "daemons.out", "ab")
        munge = self.root / "munge"
        self.procs["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--key-file={munge / 'munge.key'}",
             f"--socket={self.munge_socket}", f"--pid-file={munge / 'munged.pid'}",
             f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"],
            stdout=log, stderr=log)
        self._wait(lambda: self.munge_socket.exists(), "munged socket", 20)
        env = self.env
        self.procs["slurmctld"] = subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)],
                                                   stdout=log, stderr=log, env=env)
        if self.nodes == 1:
            self.procs["slurmd"] = subprocess.Popen([_which("slurmd"), "-D", "-f", str(self.conf)],
                                                    stdout=log, stderr=log, env=env)
        for i in range(self.nodes if self.nodes > 1 else 0):
            (self.root / "spool" / f"n{i + 1}").mkdir(parents=True, exist_ok=True)
            self.procs[f"slurmd-n{i + 1}"] = subprocess.Popen(
                [_which("slurmd"), "-D", "-N", f"n{i + 1}", "-f", str(self.conf)], stdout=log, stderr=log, env=env)
        self._wait(self.node_idle, "node idle in sinfo", timeout)
        return self

    def node_idle(self) -> bool:
        """Every node idle."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env,
                             check=False)
        states = [line.strip().rstrip("*") for line in out.stdout.splitlines() if line.strip()]
        return len(states) == self.nodes and all(s == "idle" for s in states)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"SLURM daemon(s) {dead} exited while waiting for {what}; "
                                   f"logs in {self.root / 'log'}:\n" + self.logs())
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.root / 'log'}:\n"
                           + self.logs())

    def logs(self, tail: int = 3000) -> str:
        texts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if path.exists():
                texts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(texts)

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons by pid (slurmd first)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True, timeout=30, check=False)
        for name in (*[n for n in self.procs if n.startswith("slurmd")], "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- clients ----------------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env={**self.env, **kw.pop("env", {})},
                              timeout=kw.pop("timeout", 60), check=False, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, *args: str, env: dict | None = None, cwd=None) -> str:
        """Submit; returns the job id (`--parsable`)."""
        out = self.run("sbatch", "--parsable", *args, env=env or {}, cwd=cwd)
        return out.stdout.strip().split(";")[0]

    def state(self, job: str) -> dict[str, str]:
        """JobState, ExitCode, Restarts, ... of a job (or of each array task: `scontrol show job` lists them)."""
        out = self.run("scontrol", "show", "job", "-o", job, check=False)
        fields = {}
        for token in out.stdout.split():
            if "=" in token:
                key, _, value = token.partition("=")
                fields.setdefault(key, value)
        return fields

    def array_states(self, job: str) -> list[str]:
        out = self.run("scontrol", "show", "job", "-o", job, check=False)
        return [tok.split("=", 1)[1] for line in out.stdout.splitlines() for tok in line.split()
                if tok.startswith("JobState=")]

    def wait(self, job: str, timeout: float,
             until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")) -> list[str]:
        """Wait until every task of the job is in a final state; returns the states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.array_states(job)
            if states and all(s in until for s in states):
                return states
            time.sleep(1)
        raise TimeoutError(f"job {job} not finished after {timeout:.0f}s: {self.array_states(job)}\n{self.logs()}")


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lsde-slurm")).start()
    print(f"SLURM up: export SLURM_CONF={cluster.conf}")
    try:
        signal.pause()
    finally:
        cluster.stop()
