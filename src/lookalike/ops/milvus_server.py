"""A real Milvus 2.3.5 standalone server from the ``milvus`` wheel, started safely on loopback.

The wheel's own launcher (``milvus.MilvusServer``) breaks on a shared machine: its embedded etcd
always takes ports 2379/2380, it waits minutes on a server that already crashed, it ignores most
options, its components register on the host's public address, and its stop can hang or leave
the server running. This module keeps only the wheel's binaries and config template and runs the
process itself. Linux only (the wheel ships x86-64 Linux binaries).

    with MilvusServer() as server:            # fresh temporary data dir, removed at stop
        client = MilvusClient(server.uri, token=server.root_token.reveal())
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..config import Secret
from ..errors import EngineUnavailableError
from .admin import restrict_public_role

log = logging.getLogger(__name__)

MILVUS_WHEEL = "milvus==2.3.5"
# Where a lookalike-started server records itself, so that a later run can stop a stray one.
PIDFILE = "lookalike-milvus.json"
# The root password this launcher set, kept beside the data it protects (mode 0600).
PASSWORD_FILE = "root-password"
# Every component of a standalone server; each would otherwise register on the host's first
# non-loopback address.
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
# Milvus 2.3 allows 10 roles (2 built in), 100 users and 64 databases by default: 8 organisations.
_LIMITS = {"proxy.maxRoleNum": 1024, "proxy.maxUserNum": 1024, "rootCoord.maxDatabaseNum": 1024}
_TEMPORARY_PREFIX = "lookalike-milvus-"
_LOG = Path("logs", "milvus-stdout.log")
_DEFAULT_ROOT_PASSWORD = "Milvus"  # what a fresh 2.3.5 server accepts until it is changed


class MilvusServer:
    """One Milvus standalone process: loopback, free ports, authentication on, a root password
    of its own.

    Args:
        data_dir: where the server keeps its data, config and logs. ``None`` makes a fresh
            temporary directory that :meth:`stop` removes; a given directory is kept.
        bin_dir: where the wheel's binaries are unpacked once and shared by every server
            (default ``$XDG_CACHE_HOME/lookalike/milvus-2.3.5``).
        start_timeout: seconds to wait for the server to answer before giving up.
        stop_grace: seconds between SIGTERM and SIGKILL (2.3.5 can hang on SIGTERM).
        die_with_parent: have the kernel kill the server when the thread that started it ends
            (``setpriv --pdeathsig``): no stray server after a killed test run. Leave it off when
            the starting thread may end before the server should.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 180.0,
        stop_grace: float = 3.0,
        die_with_parent: bool = False,
    ) -> None:
        self._owns_dir = data_dir is None
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._bin_dir = Path(bin_dir) if bin_dir is not None else _default_bin_dir()
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._password: Secret | None = None
        self._log_start = 0
        self.start_seconds: float | None = None

    # -- what callers use -------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise EngineUnavailableError("the Milvus server has no data directory until it starts")
        return self._data_dir

    @property
    def uri(self) -> str:
        """``http://127.0.0.1:<port>``, the address clients connect to."""
        if "proxy_port" not in self._ports:
            raise EngineUnavailableError("the Milvus server is not started: it has no URI yet")
        return f"http://127.0.0.1:{self._ports['proxy_port']}"

    @property
    def root_token(self) -> Secret:
        """``root:<password>`` for ``MilvusClient(uri, token=...)``; never printed."""
        if self._password is None:
            raise EngineUnavailableError("the Milvus server is not started: no root credentials yet")
        return Secret(f"root:{self._password.reveal()}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        if not self.running:
            raise EngineUnavailableError("the Milvus server is not running")
        return _rss_bytes(self._proc.pid)  # type: ignore[union-attr]

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.uri}" if self.running else "stopped"
        return f"MilvusServer({state}, data_dir={str(self._data_dir)!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MilvusServer:
        """Start the server and wait until root can log in; a second call does nothing.

        Raises:
            EngineUnavailableError: the wheel is missing, or the server died or did not answer.
        """
        if self.running:
            return self
        began = time.monotonic()
        if self._data_dir is None:
            reap_orphans()
            self._data_dir = Path(tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        reap(self._data_dir)  # a server left behind by a killed run would hold the data
        exe = _unpack_binaries(self._bin_dir)
        if not self._ports:  # a restart keeps its ports, so clients find it again
            self._ports = _choose_ports()
        env = self._write_config()
        self._launch(exe, env)
        try:
            self._wait_healthy(began)
            self._secure_root(began)
            # Milvus 2.3 gives every user's public role the run of all databases at each start.
            restrict_public_role(self.uri, self.root_token)
        except BaseException:
            self._terminate()
            raise
        self.start_seconds = time.monotonic() - began
        log.info("Milvus server pid %d at %s started in %.1f s", self.pid, self.uri, self.start_seconds)
        return self

    def stop(self, keep_data: bool = False) -> None:
        """Stop the server for sure (SIGTERM, then SIGKILL) and remove a temporary data dir.

        With ``keep_data`` a later :meth:`start` resumes on the same data, URI and password:
        what a server outage looks like to its clients.
        """
        self._terminate()
        if self._owns_dir and self._data_dir is not None and not keep_data:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._ports = {}
            self._password = None

    def restart(self) -> MilvusServer:
        """Stop and start again on the same data, URI and password."""
        self.stop(keep_data=True)
        return self.start()

    # -- steps -------------------------------------------------------------------------------

    def _write_config(self) -> dict[str, str]:
        """Write milvus.yaml and the embedded etcd's config; return the process environment."""
        from milvus import MilvusServerConfig  # the wheel is an optional dependency

        data = self.data_dir
        config = MilvusServerConfig(data_dir=str(data))
        for key, port in self._ports.items():
            if key in config.configurable_items:  # etcd_peer_port and metrics_port are not yaml keys
                config.set(key, port)
        # Keyword options of the wheel's constructor are ignored: set the yaml keys instead.
        config.set("authorization_enabled", True)
        for component in _COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        config.resolve_storage()
        config.write_config()

        # Embedded etcd ignores the yaml's ports and takes 2379/2380 unless given its own config.
        etcd_config = data / "configs" / "embedEtcd.yaml"
        client_url = f"http://127.0.0.1:{self._ports['etcd_port']}"
        peer_url = f"http://127.0.0.1:{self._ports['etcd_peer_port']}"
        etcd_config.write_text(
            "name: lookalike\n"
            f"data-dir: {data / 'data' / 'etcd.data'}\n"
            f"listen-client-urls: {client_url}\n"
            f"advertise-client-urls: {client_url}\n"
            f"listen-peer-urls: {peer_url}\n"
            f"initial-advertise-peer-urls: {peer_url}\n"
            f"initial-cluster: lookalike={peer_url}\n",
            encoding="utf-8",
        )
        env = dict(os.environ)
        # Milvus reads any setting from the environment: "a.bC" from A_BC.
        env.update({key.replace(".", "_").upper(): str(value) for key, value in _LIMITS.items()})
        env.update(
            DEPLOY_MODE="STANDALONE",
            METRICS_PORT=str(self._ports["metrics_port"]),
            MILVUS_RUN_DIR=str(data / "run"),
            MILVUSCONF=str(data / "configs") + os.sep,
            ETCD_CONFIG_PATH=str(etcd_config),
            LD_LIBRARY_PATH=os.pathsep.join(
                p for p in (str(self._bin_dir / "bin"), os.environ.get("LD_LIBRARY_PATH")) if p
            ),
        )
        return env

    def _launch(self, exe: Path, env: dict[str, str]) -> None:
        command = [str(exe), "run", "standalone"]
        if self.die_with_parent:
            setpriv = shutil.which("setpriv")  # util-linux
            if setpriv:
                command = [setpriv, "--pdeathsig", "KILL", "--", *command]
            else:
                log.warning("setpriv not found: the Milvus server may outlive this process (reap_orphans)")
        with open(self.data_dir / _LOG, "ab") as out:
            self._log_start = out.tell()  # the log outlives restarts: excerpts start here
            # A session of its own: a Ctrl-C in the terminal reaches the caller, which stops
            # the server in order, instead of the server starting its own (hanging) shutdown.
            self._proc = subprocess.Popen(
                command,
                cwd=self.data_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _write_pidfile(self.data_dir, self._proc.pid, temporary=self._owns_dir)

    def _wait_healthy(self, began: float) -> None:
        """Poll /healthz, watching the process: a crashed server fails at once, not at timeout."""
        url = f"http://127.0.0.1:{self._ports['metrics_port']}/healthz"
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if b"OK" in response.read():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            self._check_deadline(began)
            time.sleep(0.1)

    def _secure_root(self, began: float) -> None:
        """Log in as root and replace the well-known default password with a generated one."""
        from pymilvus import MilvusClient

        stored = self.data_dir / PASSWORD_FILE
        if self._password is None and stored.exists():
            self._password = Secret(stored.read_text(encoding="utf-8").strip())
        while True:
            self._check_alive()
            try:
                if self._password is not None:
                    MilvusClient(self.uri, token=self.root_token.reveal(), timeout=5, dedicated=True).close()
                    return
                client = MilvusClient(self.uri, token=f"root:{_DEFAULT_ROOT_PASSWORD}", timeout=5, dedicated=True)
                break
            except Exception:  # the proxy accepts logins a moment after /healthz says OK
                self._check_deadline(began)
                time.sleep(0.2)
        password = secrets.token_urlsafe(24)
        try:
            client.update_password("root", _DEFAULT_ROOT_PASSWORD, password)
        finally:
            client.close()
        fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(password)
        self._password = Secret(password)

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        code = self._proc.returncode if self._proc is not None else None
        raise EngineUnavailableError(
            f"the Milvus server in {self.data_dir} exited with code {code} while starting; "
            f"from its log:\n{_log_excerpt(self.data_dir, self._log_start)}"
        )

    def _check_deadline(self, began: float) -> None:
        if time.monotonic() - began > self.start_timeout:
            raise EngineUnavailableError(
                f"the Milvus server in {self.data_dir} did not answer within "
                f"{self.start_timeout:.0f} s; from its log:\n{_log_excerpt(self.data_dir, self._log_start)}"
            )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_process(proc.pid, self.stop_grace, proc)
        if self._data_dir is not None:
            (self._data_dir / PIDFILE).unlink(missing_ok=True)


def reap(data_dir: str | os.PathLike[str]) -> bool:
    """Kill the server a lookalike run left in ``data_dir`` (its pidfile says which).

    Returns True if one was running. The recorded start time guards against killing an unrelated
    process that reused the pid.
    """
    pidfile = Path(data_dir) / PIDFILE
    try:
        record = json.loads(pidfile.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    killed = _start_time(record["pid"]) == record["start_time"]
    if killed:
        log.warning("stopping a stray Milvus server, pid %d, in %s", record["pid"], data_dir)
        _stop_process(record["pid"], grace=0.0)
    pidfile.unlink(missing_ok=True)
    return killed


def reap_orphans() -> list[Path]:
    """Stop the servers of temporary data dirs (``MilvusServer()`` without ``data_dir``) whose
    starting process is gone, and delete those dirs; :meth:`MilvusServer.start` calls it.

    A server whose starting process lives (another test run working now) is left alone, and a
    data dir that was given explicitly is never deleted.
    """
    removed = []
    for pidfile in Path(tempfile.gettempdir()).glob(f"{_TEMPORARY_PREFIX}*/{PIDFILE}"):
        try:
            record = json.loads(pidfile.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not record.get("temporary") or _start_time(record["owner_pid"]) == record["owner_start_time"]:
            continue
        reap(pidfile.parent)
        shutil.rmtree(pidfile.parent, ignore_errors=True)
        removed.append(pidfile.parent)
    return removed


def wheel_available() -> bool:
    """Whether the ``milvus`` wheel (the server's binaries) is installed."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        return False
    return True


# -- helpers ----------------------------------------------------------------------------------


def _default_bin_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "lookalike" / MILVUS_WHEEL.replace("==", "-")


def _unpack_binaries(bin_dir: Path) -> Path:
    """Unpack the wheel's binaries once (246 MB, ~5 s) into a directory every server shares."""
    try:
        from milvus import _initialize_data_files
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the Milvus server binaries are not installed: pip install '{MILVUS_WHEEL}'"
        ) from exc
    bin_dir.mkdir(parents=True, exist_ok=True)
    # Another process may be unpacking the same files now: take turns.
    with open(bin_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _initialize_data_files(str(bin_dir))  # skips files whose checksum is unchanged
    return bin_dir / "bin" / "milvus"


def _choose_ports() -> dict[str, int]:
    """Free ports for every listener, below the kernel's ephemeral range.

    Outgoing connections take their source ports from the ephemeral range, so a port chosen
    there could be taken between our check and the server's bind. Probes use SO_REUSEADDR, as
    the server's own listeners do, so a port in TIME_WAIT after a restart still counts as free.
    """
    from milvus import MilvusServerConfig

    names = [k for k in MilvusServerConfig().configurable_items if k.endswith("_port")]
    names += ["etcd_peer_port", "metrics_port"]
    low = _ephemeral_range_start()
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            while True:
                port = random.randrange(max(1024, low - 20000), low)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("", port))  # the server binds all interfaces
                except OSError:
                    sock.close()
                    continue
                held.append(sock)  # hold it so the next name cannot get the same port
                ports[name] = port
                break
    finally:
        for sock in held:
            sock.close()
    return ports


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _write_pidfile(data_dir: Path, pid: int, temporary: bool) -> None:
    record = {
        "pid": pid,
        "temporary": temporary,
        "start_time": _start_time(pid),
        "owner_pid": os.getpid(),
        "owner_start_time": _start_time(os.getpid()),
    }
    (data_dir / PIDFILE).write_text(json.dumps(record), encoding="utf-8")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stop_process(pid: int, grace: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return once the process is gone."""
    if grace > 0 and _signal(pid, signal.SIGTERM) and _wait_gone(pid, grace, proc):
        return
    if _signal(pid, signal.SIGKILL) and not _wait_gone(pid, 30.0, proc):
        raise EngineUnavailableError(f"the Milvus server pid {pid} survived SIGKILL")
    if proc is not None:
        proc.poll()  # reap our child, or it lingers as a zombie


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:  # our child: reap it, or it lingers as a zombie
                return True
        elif _start_time(pid) is None or _is_zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _log_excerpt(data_dir: Path, start: int, lines: int = 5) -> str:
    """What the server's log says went wrong since byte ``start``: its first errors and panics,
    else its last lines."""
    try:
        with open(data_dir / _LOG, "rb") as log_file:
            log_file.seek(start)
            text = log_file.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    every = text.splitlines()
    telling = [line for line in every if "[ERROR]" in line or "[FATAL]" in line or line.startswith("panic:")]
    return "\n".join(line[:400] for line in (telling[:lines] or every[-lines:]))
