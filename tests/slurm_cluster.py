"""A throw-away one-node SLURM cluster on this machine, for the job-script tests.

    with SlurmCluster() as cluster:          # or cluster.start() ... cluster.stop()
        subprocess.run(["sbatch", "--wait", ...], env=cluster.env())

As root, where ``apt-get`` works, :func:`ensure_installed` installs Debian's ``slurm-wlm``
and ``munge`` when ``sbatch`` is missing. :class:`SlurmCluster` then generates a munge key
if ``/etc/munge/munge.key`` is missing, writes a ``slurm.conf`` into a scratch folder
(free TCP ports, state, spool, logs and munge's socket all inside it, so nothing clashes
with a real installation), and starts ``munged``, ``slurmctld`` and ``slurmd`` in the
foreground as its own child processes. It waits until ``sinfo`` reports the node idle, and
stops the daemons by their process ids (cancelling any job left first), also when the
start fails. Every step has a time limit; a failure raises :class:`ClusterError` with the
reason and the tail of the daemon logs, which a test turns into a skip.

The configuration matches the target machine (SLURM 22.05, no
systemd, ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres`` with ``CR_Core``,
``MpiDefault=pmi2`` for the pip MPICH).
"""
from __future__ import annotations

import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
MUNGE_KEY = Path("/etc/munge/munge.key")


class ClusterError(RuntimeError):
    """The cluster cannot be installed or started here (the message says why)."""


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def ensure_installed(timeout: float = 240) -> None:
    """Install slurm-wlm and munge with apt-get if ``sbatch`` is missing (root only)."""
    if all(_sbin(p) for p in ("sbatch", "slurmctld", "slurmd", "munged")):
        return
    if os.geteuid() != 0:
        raise ClusterError("SLURM is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        raise ClusterError("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + PACKAGES
    deadline = time.monotonic() + timeout
    done = None
    for attempt in (install, ["apt-get", "update", "-q"], install):  # update only if the first try fails
        try:
            done = subprocess.run(attempt, env=env, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{' '.join(attempt)} took longer than {timeout:.0f} s") from None
        if attempt is install and done.returncode == 0:
            break
    if done.returncode != 0 or not _sbin("sbatch"):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed: {' | '.join(tail)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(1, int(line.split()[1]) // 1024 - 512)  # leave some for the OS
    return 1024


class SlurmCluster:
    """munged + slurmctld + slurmd on 127.0.0.1, configured in a scratch folder.

    Parameters
    ----------
    cpus : int, optional
        CPUs of the one node (default: ``os.cpu_count()``, at least 2).
    timeout : float
        Seconds to wait for each daemon to come up.
    """

    def __init__(self, cpus: int | None = None, timeout: float = 30.0):
        self.cpus = cpus or max(2, os.cpu_count() or 1)  # two ranks per job at least
        self.timeout = timeout
        self.host = platform.node().split(".")[0] or "localhost"
        self.scratch: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.startup_s = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "SlurmCluster":
        """Install if needed, then start the three daemons; stops what it started on any failure."""
        if os.geteuid() != 0:
            raise ClusterError("starting slurmctld/slurmd by hand needs root")
        ensure_installed()
        t0 = time.monotonic()
        try:
            self.scratch = Path(tempfile.mkdtemp(prefix="mpifed-slurm-"))
            self.scratch.chmod(0o755)  # munged (user munge) must reach its own folder inside
            self._start_munge()
            self._write_conf()
            self._daemon("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld answers scontrol ping",
                       lambda: "UP" in self._ask(["scontrol", "ping"]), "slurmctld")
            self._daemon("slurmd", [_sbin("slurmd"), "-D", "-N", self.host, "-f", str(self.conf)])
            self._wait("the node is idle in sinfo",
                       lambda: self._ask(["sinfo", "-h", "-N", "-o", "%T"]).strip() == "idle", "slurmd")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel leftover jobs, then end every daemon this object started (by PID), newest first."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._ask(["scancel", "--user", pwd.getpwuid(os.geteuid()).pw_name], timeout=10)
                time.sleep(0.5)
            except ClusterError:
                pass
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if hasattr(proc, "_log"):
                proc._log.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    # -- for callers -------------------------------------------------------------------------------------------
    def env(self, **extra) -> dict:
        """os.environ for sbatch/srun/squeue against this cluster (an outer job's SLURM_* removed)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env.update(SLURM_CONF=str(self.conf), **extra)
        return env

    def exit_code(self, job_id: int) -> int | None:
        """A finished job's exit status as slurmctld logged it ("_job_complete: JobId=N WEXITSTATUS S"), None if
        not logged. ``sbatch --wait`` polls every 2 s and the record lives MinJobAge = 4 s: on a loaded machine
        the poll can come after the purge, and sbatch then exits 0 with "Job N no longer found"."""
        log = (self.scratch / "slurmctld.log").read_text(errors="replace")
        found = re.findall(rf"_job_complete: JobId={int(job_id)} WEXITSTATUS (\d+)", log)
        return int(found[-1]) if found else None

    def logs(self, lines: int = 15) -> str:
        """The last lines of every daemon's log and console output (for failure messages)."""
        out = []
        paths = sorted(self.scratch.glob("*.out")) + sorted(self.scratch.glob("**/*.log")) if self.scratch else []
        for path in paths:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- internals ---------------------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        if not MUNGE_KEY.exists():  # normally made by the package's postinst; a bare image may lack it
            MUNGE_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(MUNGE_KEY.parent, munge.pw_uid, munge.pw_gid)
            fd = os.open(MUNGE_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
            os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
        folder = self.scratch / "munge"
        folder.mkdir(mode=0o755)
        os.chown(folder, munge.pw_uid, munge.pw_gid)
        self.munge_socket = folder / "munge.socket"
        self._daemon("munged", [_sbin("munged"), "--foreground", f"--socket={self.munge_socket}",
                                f"--key-file={MUNGE_KEY}", f"--pid-file={folder / 'munged.pid'}",
                                f"--seed-file={folder / 'munged.seed'}", f"--log-file={folder / 'munged.log'}",
                                "--num-threads=2"],
                     user=munge.pw_uid, group=munge.pw_gid)
        self._wait("munged's socket exists", lambda: self.munge_socket.is_socket(), "munged")

    def _write_conf(self) -> None:
        s = self.scratch
        for sub in ("state", "spool"):
            (s / sub).mkdir()
        self.conf = s / "slurm.conf"
        self.conf.write_text("\n".join([
            "ClusterName=mpifed-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=pmi2",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            # sbatch --wait polls every 2 s, and only while 2 s < MinJobAge / 2; a larger MinJobAge lets the
            # poll interval grow to 8 and 32 s, which would triple a short job's wall time.
            "MinJobAge=4",
            # job ids of their own: every new cluster would start at 1, and MPICH names a job's shared-memory
            # segment (/dev/shm/mpich_shm_*) after its PMI job id, so a segment left by a killed job of an
            # earlier cluster with the same id made a new job's MPI_Init fail ("Message truncated")
            f"FirstJobId={int.from_bytes(os.urandom(3), 'little') + 1000}",
            "SlurmdParameters=config_overrides",  # accept CPUs above the hardware's (a 1-core runner)
            "KillWait=5",
            "InactiveLimit=0",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MailProg=/bin/true",
            f"StateSaveLocation={s / 'state'}",
            f"SlurmdSpoolDir={s / 'spool'}",
            f"SlurmctldPidFile={s / 'slurmctld.pid'}",
            f"SlurmdPidFile={s / 'slurmd.pid'}",
            f"SlurmctldLogFile={s / 'slurmctld.log'}",
            f"SlurmdLogFile={s / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _daemon(self, name: str, command: list, **kwargs) -> None:
        log = open(self.scratch / f"{name}.out", "wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env() if name != "munged" else None, **kwargs)
        proc._log = log
        self.procs[name] = proc

    def _ask(self, command: list, timeout: float = 10) -> str:
        try:
            done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{' '.join(command)} did not answer in {timeout} s") from None
        return done.stdout

    def _wait(self, what: str, ready, daemon: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.procs[daemon].poll() is not None:
                raise ClusterError(f"{daemon} exited with code {self.procs[daemon].returncode} before {what}\n"
                                   + self.logs(10))
            try:
                if ready():
                    return
            except ClusterError:
                pass
            time.sleep(0.1)
        raise ClusterError(f"timed out after {self.timeout:.0f} s waiting until {what}\n" + self.logs(10))
