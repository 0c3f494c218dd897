"""Warm start: a stage runs in a fork of a process that has already imported its libraries.

Each DVC stage is its own `crispml <stage>` process, and importing pandas, scikit-learn,
skops, MLflow and Evidently costs that process one to six seconds before it does any
work: a third of a cold `dvc repro` on the default data, paid again by every stage, where
a single script pays it once. So the first stage command starts, in the background, one
*warm process* that imports those libraries and nothing of CrispML, then waits on a
Unix socket. Every later stage command sends it its arguments, environment, working
directory and standard streams; the warm process forks, and the fork runs the command
exactly as the command's own process would, then reports the exit code. A fork starts in
milliseconds with everything imported.

What keeps that equivalent to a fresh process:

* CrispML's own code is never preloaded: the fork imports it afresh from the caller's
  `sys.path`, so an edited stage runs its new code (DVC re-runs stages on code changes).
* The warm process serves only callers whose interpreter, `sys.path`, installed packages
  (the site-packages folders' modification times) and import-time environment
  (`PYTHON*`, `OMP_*`, `LANG`, ... see `IMPORT_TIME_ENVIRONMENT`) match its own: those
  are part of the socket's name, so any other caller finds no socket and gets its own.
  Everything else of the caller's environment replaces the fork's before the command.
* The fork gets the caller's stdin, stdout and stderr themselves (passed over the
  socket), so output, progress bars and terminal detection behave as usual; signals the
  caller receives (Ctrl-C, DVC stopping a stage) are forwarded to the fork, and a caller
  killed outright takes its fork with it. Writes stay atomic as everywhere else, so a
  stage stopped half-way leaves nothing DVC would cache.
* Random generators are re-seeded in the fork, the fork's signal handlers are the
  defaults, and its CPU time starts at zero.

The warm process is private to its user (socket in a 0700 folder, peers checked by uid)
and exits after `CRISPML_WARM_IDLE_SECONDS` (300) without a request. `CRISPML_WARM_START=0`
turns the whole mechanism off; `crispml warm status|stop` shows and stops it. If anything
about it fails, the command simply runs in its own process, as it always could.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The commands that `dvc.yaml` runs: what a warm start is for.
STAGE_COMMANDS = frozenset(
    {
        "source",
        "ingest",
        "prepare",
        "curate",
        "train",
        "report",
        "register",
        "score",
        "label",
        "verify",
    }
)

# What the stages import, cheapest and most widely used first. Third-party only: none
# of CrispML's own modules, which must be imported afresh by each command.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "pyarrow.compute",
    "sqlalchemy",
    "pydantic",
    "yaml",
    "click",
    "tqdm",
    "scipy.stats",
    "sklearn.base",
    "sklearn.compose",
    "sklearn.ensemble",
    "sklearn.impute",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "skops.io",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.models",
    "evidently",
    "evidently.presets",
    "evidently.metrics",
)

# Variables that libraries read while they are imported (thread pools, locale, the
# interpreter itself): a warm process serves only callers that agree on every one.
IMPORT_TIME_ENVIRONMENT = (
    "PYTHON",
    "OMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "GOTO_",
    "VECLIB_",
    "NUMEXPR_",
    "BLIS_",
    "LD_",
    "MALLOC_",
    "LANG",
    "LC_",
    "SKLEARN_",
    "MLFLOW_LOGGING",
    "CRISPML_WARM_",
)

ENABLED_VARIABLE = "CRISPML_WARM_START"
DIR_VARIABLE = "CRISPML_WARM_DIR"
# A comma-separated list that replaces PRELOAD (a smaller warm process, or the tests').
PRELOAD_VARIABLE = "CRISPML_WARM_PRELOAD"
# Set in a fork to the memory it shared with the warm process when it started (MB):
# reports/perf says a stage ran warm, and how much of its peak memory was that.
FORK_VARIABLE = "CRISPML_IN_WARM_FORK"
IDLE_VARIABLE = "CRISPML_WARM_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 300.0
# How long a caller waits for a warm process to answer before running the command itself.
CONNECT_TIMEOUT = 2.0
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_HEADER = struct.Struct("!I")


def enabled(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    return environ.get(ENABLED_VARIABLE, "1").strip().lower() not in {"0", "false", "no", "off"}


def preload_list(environ: dict[str, str] | os._Environ = os.environ) -> tuple[str, ...]:
    given = environ.get(PRELOAD_VARIABLE)
    if given is None:
        return PRELOAD
    return tuple(name.strip() for name in given.split(",") if name.strip())


def is_stage_command(argv: Sequence[str]) -> bool:
    """Whether the command line runs one of dvc.yaml's stages (`crispml score --frame 7`)."""
    return len(argv) > 1 and argv[1] in STAGE_COMMANDS and "--help" not in argv[2:]


# --------------------------------------------------------------------------- identity


def fingerprint(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """What a warm process must share with its callers, as a short hash.

    The interpreter, where imports come from, what is installed there (a pip install or
    upgrade touches the site-packages folder), the import-time environment and the user.
    """
    parts = [sys.executable, sys.prefix, sys.version, str(os.getuid())]
    parts += list(sys.path)
    for folder in sys.path:
        if folder.endswith("site-packages"):
            with contextlib.suppress(OSError):
                parts.append(f"{folder}@{os.stat(folder).st_mtime_ns}")
    parts += sorted(
        f"{name}={value}"
        for name, value in environ.items()
        if name.startswith(IMPORT_TIME_ENVIRONMENT)
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def runtime_dir() -> Path:
    """A folder only this user can enter, so no other user's process can connect.

    `CRISPML_WARM_DIR` names it (the tests give each session its own); by default it is
    `crispml-warm-<uid>` in XDG_RUNTIME_DIR or the temporary folder.
    """
    given = os.environ.get(DIR_VARIABLE)
    if given:
        folder = Path(given)
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        folder = Path(base) / f"crispml-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = folder.stat()
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise PermissionError(f"{folder} is not private to this user")
    return folder


@dataclass(frozen=True)
class Place:
    """The files of one warm process: its socket, its lock and its log."""

    key: str
    folder: Path

    @classmethod
    def of(cls, key: str) -> Place:
        return cls(key, runtime_dir())

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.key}.sock"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.key}.log"


# --------------------------------------------------------------------------- messages


def _send_json(conn: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    body = json.dumps(message).encode()
    payload = _HEADER.pack(len(body)) + body
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = conn.sendmsg([payload], ancillary)
        if sent < len(payload):
            conn.sendall(payload[sent:])
    else:
        conn.sendall(payload)


def _receive_json(conn: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """One message and the descriptors that came with it; (None, []) when the peer left."""
    fds: list[int] = []
    data = b""
    space = socket.CMSG_SPACE(max_fds * array.array("i").itemsize) if max_fds else 0
    while len(data) < _HEADER.size:
        chunk, ancillary, _flags, _address = conn.recvmsg(_HEADER.size - len(data), space)
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(raw[: len(raw) - (len(raw) % received.itemsize)])
                fds += list(received)
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None, []
        data += chunk
    (length,) = _HEADER.unpack(data)
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds


def _peer_uid(conn: socket.socket) -> int:
    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid


# --------------------------------------------------------------------------- caller


def run_warm(argv: Sequence[str]) -> int | None:
    """Run the command in the warm process and return its exit code.

    None means "run it yourself": warm start is off, no warm process is ready yet (one is
    then started for the next command), or it could not take the request.
    """
    if not enabled() or not is_stage_command(argv):
        return None
    try:
        place = Place.of(fingerprint())
    except OSError:
        return None
    conn = _connect(place)
    if conn is None:
        start_server(place)
        return None
    with conn:
        return _ask(conn, argv)


def _connect(place: Place) -> socket.socket | None:
    if not place.socket.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT)
    try:
        conn.connect(str(place.socket))
        if _peer_uid(conn) != os.getuid():
            raise PermissionError("the warm process belongs to another user")
    except OSError:
        conn.close()
        return None
    return conn


def _ask(conn: socket.socket, argv: Sequence[str]) -> int | None:
    request = {
        "argv": list(argv),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": _current_umask(),
        "sys_path": list(sys.path),
    }
    try:
        _send_json(conn, request, fds=[0, 1, 2])
        started, _ = _receive_json(conn)
    except OSError:
        return None
    if not started or "pid" not in started:
        return None  # refused before anything ran: run it here
    child = int(started["pid"])
    try:
        # Only now does the fork run the command: a caller that gave up before this
        # point (and runs the command itself) can never have it run twice.
        _send_json(conn, {"go": True})
    except OSError:
        return None
    conn.settimeout(None)

    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                finished, _ = _receive_json(conn)
                break
            except InterruptedError:
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if (finished is None or "exit" not in finished) and forwarded:
        # The fork died of the signal this caller passed on: die of it too, so that DVC
        # or the shell sees what a command of its own would have shown.
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    if finished is None or "exit" not in finished:
        print(
            "crispml: the warm process that ran this command ended without an exit code",
            file=sys.stderr,
        )
        return 1
    return int(finished["exit"])


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def start_server(place: Place) -> None:
    """Start a warm process for `place` in the background, unless one is starting already."""
    try:
        with _locked(place.lock, blocking=False):
            pass
    except BlockingIOError:
        return  # a warm process holds the lock: it is starting or running
    except OSError:
        return
    log = open(place.log, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.warm", "serve", place.key, json.dumps(sys.path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
    except OSError:
        pass
    finally:
        log.close()


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- server


def serve(key: str, caller_path: Sequence[str]) -> None:
    """The warm process: preload, listen, fork one child per command, leave when idle.

    `caller_path` is the `sys.path` of the command that started it: `python -m` puts
    the working folder first instead of the script's, and imports must resolve as the
    callers' do.
    """
    sys.path[:] = list(caller_path)
    place = Place.of(key)
    if fingerprint() != key:
        _log(f"refusing to serve {key}: this process's fingerprint differs")
        return
    lock = os.open(place.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another warm process serves this key
    os.ftruncate(lock, 0)
    os.write(lock, str(os.getpid()).encode())
    started = time.monotonic()
    for name in preload_list():
        try:
            __import__(name)
        except Exception as error:  # a missing optional library only costs its import later
            _log(f"preload {name}: {type(error).__name__}: {error}")
    import threading

    if threading.active_count() != 1:
        # Forking a process with threads can leave a lock held forever in the child.
        _log(f"not serving: {threading.active_count()} threads after preloading")
        return
    idle = float(os.environ.get(IDLE_VARIABLE, DEFAULT_IDLE_SECONDS))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending = place.folder / f".{key}.{os.getpid()}.sock"
    with contextlib.suppress(FileNotFoundError):
        pending.unlink()
    listener.bind(str(pending))
    os.chmod(pending, 0o600)
    listener.listen(16)
    os.replace(pending, place.socket)  # callers never see a socket that is not listening
    inode = place.socket.stat().st_ino
    _log(
        f"serving {key} (pid {os.getpid()}) after {time.monotonic() - started:.1f} s of preloading"
    )
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forks are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener.settimeout(idle)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                break
            except InterruptedError:
                continue
            with conn:
                if _peer_uid(conn) != os.getuid():
                    continue
                if os.fork() == 0:
                    listener.close()
                    os.close(lock)
                    _child(conn)  # never returns
    finally:
        with contextlib.suppress(OSError):
            if place.socket.stat().st_ino == inode:
                place.socket.unlink()
        listener.close()
        _log(f"stopped {key}")


def _child(conn: socket.socket) -> None:
    """Run one command as if this process had been started for it; then exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.settimeout(None)
        request, fds = _receive_json(conn, max_fds=3)
        if request is None or len(fds) != 3:
            os._exit(1)
        _send_json(conn, {"pid": os.getpid()})
        go, _ = _receive_json(conn)
        if not go or not go.get("go"):
            for fd in fds:
                os.close(fd)
            os._exit(0)  # the caller went away before its command started: run nothing
        _become_caller(request, fds)
        _watch_caller(conn)
        code = _run_command(request["argv"])
        _finish_like_an_interpreter()
        with contextlib.suppress(OSError):
            _send_json(conn, {"exit": code})
    except BaseException:  # nothing may return into the server's loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)


def _become_caller(request: dict, fds: list[int]) -> None:
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        # As at interpreter startup: stdout is line-buffered on a terminal only, stderr
        # always (Python 3.9 on).
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
        sys.stderr.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    os.environ[FORK_VARIABLE] = str(_resident_mb())
    sys.path[:] = request["sys_path"]
    sys.argv = list(request["argv"])
    for name in [n for n in sys.modules if n == "pipeline" or n.startswith("pipeline.")]:
        del sys.modules[name]
    import importlib
    import random

    importlib.invalidate_caches()
    random.seed()
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed()


def _resident_mb() -> float:
    """This process's resident memory now, from /proc (Linux)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _watch_caller(conn: socket.socket) -> None:
    """End this fork when its caller goes away (killed with SIGKILL, say), as a child would."""
    import threading

    def watch() -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="crispml-warm-caller", daemon=True).start()


def _run_command(argv: list[str]) -> int:
    try:
        import importlib

        # The command's own code, imported afresh. (By name: what it runs is the
        # command's import closure, which tests/test_dvc_deps.py counts from cli.py.)
        cli = importlib.import_module("pipeline.cli").cli
        cli.main(args=argv[1:], prog_name="crispml")
    except SystemExit as stop:
        return _exit_code(stop.code)
    except KeyboardInterrupt:
        return 130
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _exit_code(code: object) -> int:
    """What the interpreter would exit with for `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish_like_an_interpreter() -> None:
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} crispml warm: {message}", flush=True)


# --------------------------------------------------------------------------- status


def running() -> list[dict]:
    """This user's warm processes: key, pid, whether it serves this interpreter, socket."""
    try:
        folder = runtime_dir()
    except OSError:
        return []
    current = fingerprint()
    found = []
    for lock in sorted(folder.glob("*.lock")):
        pid = _holder(lock)
        if pid is None:
            continue
        place = Place(lock.stem, folder)
        found.append(
            {
                "key": place.key,
                "pid": pid,
                "serves_this_interpreter": place.key == current,
                "ready": place.socket.exists(),
                "log": str(place.log),
            }
        )
    return found


def _holder(lock: Path) -> int | None:
    """The pid of the warm process holding `lock`, None when nobody holds it."""
    try:
        with _locked(lock, blocking=False):
            return None  # free: its process has gone
    except BlockingIOError:
        pass
    except OSError:
        return None
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_all() -> int:
    """Ask every warm process of this user to stop (SIGTERM); returns how many were asked."""
    stopped = 0
    for entry in running():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(entry["pid"], signal.SIGTERM)
            stopped += 1
    return stopped


def main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        serve(argv[1], json.loads(argv[2]))
        return 0
    print("usage: python -m pipeline.warm serve KEY SYS_PATH_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
