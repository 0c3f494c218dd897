"""Warm start (pipeline/warm.py): a stage command run in a fork behaves as its own process.

The integration tests start real warm processes in a private runtime folder of their
own, with a small preload so that they are ready in about a second, and run the real
`crispml` command in a tiny project copy. The project's code comes first on PYTHONPATH,
so an edit to it in the copy shows whether the fork runs the caller's code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline import warm
from tests.conftest import copy_project

CRISPML = shutil.which("crispml")
needs_crispml = pytest.mark.skipif(
    CRISPML is None, reason="the `crispml` command is not on PATH (pip install -e .)"
)


# --------------------------------------------------------------------------- identity


def test_the_fingerprint_follows_what_imports_depend_on() -> None:
    base = {"HOME": "/root", "PATH": "/usr/bin"}
    key = warm.fingerprint(base)
    # What a stage reads at run time does not matter to the imports: one warm process.
    assert warm.fingerprint({**base, "CRISPML_STORE_URL": "sqlite:///x.db"}) == key
    assert warm.fingerprint({**base, "DVC_STAGE": "score", "MLFLOW_TRACKING_URI": "x"}) == key
    # What libraries read while they are imported does.
    for name in ("OMP_NUM_THREADS", "PYTHONPATH", "LANG", "LC_ALL", "CRISPML_WARM_PRELOAD"):
        assert warm.fingerprint({**base, name: "1"}) != key, name


def test_only_the_stage_commands_go_to_the_warm_process() -> None:
    assert warm.is_stage_command(["crispml", "score", "--frame", "7"])
    assert warm.is_stage_command(["crispml", "verify"])
    assert not warm.is_stage_command(["crispml", "score", "--help"])
    assert not warm.is_stage_command(["crispml", "serve"])
    assert not warm.is_stage_command(["crispml", "alias", "rollback"])
    assert not warm.is_stage_command(["crispml"])
    assert not warm.enabled({"CRISPML_WARM_START": "0"})
    assert warm.enabled({})


def test_the_runtime_folder_must_be_private(monkeypatch) -> None:
    base = Path(tempfile.mkdtemp(prefix="cw"))
    try:
        monkeypatch.delenv("CRISPML_WARM_DIR")
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
        folder = warm.runtime_dir()
        assert folder.stat().st_mode & 0o777 == 0o700
        folder.chmod(0o755)
        with pytest.raises(PermissionError, match="not private"):
            warm.runtime_dir()
    finally:
        shutil.rmtree(base)


def test_the_preload_is_third_party_only() -> None:
    """CrispML's own modules must be imported afresh by every command."""
    assert not [name for name in warm.PRELOAD if name.split(".")[0] == "pipeline"]
    assert warm.preload_list({"CRISPML_WARM_PRELOAD": "numpy, click"}) == ("numpy", "click")


# --------------------------------------------------------------------------- processes

MARKER = """
    import os as _os, sys as _sys, time as _time
    print(f"marker={_os.environ.get('WARM_TEST_MARKER')} cwd={_os.getcwd()} "
          f"pid={_os.getpid()}", file=_sys.stderr, flush=True)
    if _os.environ.get("WARM_TEST_SLEEP"):
        _time.sleep(float(_os.environ["WARM_TEST_SLEEP"]))
"""


@pytest.fixture
def warm_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny project whose `source` stage reports its environment; a private warm folder."""
    root = copy_project(tmp_path / "project")
    sources = root / "pipeline" / "sources.py"
    text = sources.read_text()
    anchor = 'rewrite data/source.json only when it changed."""\n'
    assert anchor in text
    sources.write_text(text.replace(anchor, anchor + MARKER))
    # A short folder: a Unix socket's path must stay under about 100 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="cw"))
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "CRISPML_WARM_DIR": str(runtime / "warm"),
        "CRISPML_WARM_PRELOAD": "numpy,pandas,pydantic,yaml,click",
        "CRISPML_WARM_IDLE_SECONDS": "60",
        "CRISPML_GIT_COMMIT": "0" * 40,
    }
    env.pop("CRISPML_WARM_START", None)
    yield root, env
    subprocess.run([CRISPML, "warm", "stop"], env=env, capture_output=True, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list(runtime.glob("warm/*.sock")):
        time.sleep(0.1)
    shutil.rmtree(runtime, ignore_errors=True)


def crispml(root: Path, env: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CRISPML, *args], cwd=root, env=env, capture_output=True, text=True, **kwargs
    )


def wait_until_ready(env: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [CRISPML, "warm", "status"], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            found = [e for e in json.loads(done.stdout) if e["ready"]]
            if found:
                return found[0]
        time.sleep(0.2)
    raise AssertionError("no warm process became ready")


def perf(root: Path) -> dict:
    return json.loads((root / "reports" / "perf" / "source.json").read_text())


def marker(stderr: str) -> dict[str, str]:
    line = next(line for line in stderr.splitlines() if line.startswith("marker="))
    return dict(part.split("=", 1) for part in line.split())


@pytest.mark.slow
@needs_crispml
def test_a_later_stage_command_runs_in_a_fork_with_the_callers_code_env_and_folder(
    warm_project,
) -> None:
    root, env = warm_project
    first = crispml(root, {**env, "WARM_TEST_MARKER": "cold"}, "source")
    assert first.returncode == 0, first.stderr
    assert perf(root)["warm_start"] is False
    assert marker(first.stderr)["marker"] == "cold"
    server = wait_until_ready(env)

    (root / "sub").mkdir()
    second = crispml(root / "sub", {**env, "WARM_TEST_MARKER": "warm"}, "source")
    assert second.returncode == 0, second.stderr
    assert perf(root)["warm_start"] is True and perf(root)["inherited_memory_mb"] > 0
    seen = marker(second.stderr)
    assert seen["marker"] == "warm" and seen["cwd"] == str(root / "sub")
    assert int(seen["pid"]) != server["pid"]  # a fork, not the warm process itself
    assert second.stdout == first.stdout  # the stage's own answer, on the caller's stdout

    # The fork imports the caller's code afresh: an edit shows at once.
    sources = root / "pipeline" / "sources.py"
    sources.write_text(sources.read_text().replace("marker=", "edited marker="))
    third = crispml(root, env, "source")
    assert "edited marker=" in third.stderr and perf(root)["warm_start"] is True


@pytest.mark.slow
@needs_crispml
def test_exit_codes_and_errors_are_the_same_warm_and_cold(warm_project) -> None:
    root, env = warm_project
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("env: dev", "env: nowhere"))
    cold = crispml(root, {**env, "CRISPML_WARM_START": "0"}, "source")
    crispml(root, env, "source")  # starts the warm process
    wait_until_ready(env)
    warm_run = crispml(root, env, "source")
    assert cold.returncode == warm_run.returncode == 3
    assert cold.stderr.strip().splitlines()[-1] == warm_run.stderr.strip().splitlines()[-1]
    assert "nowhere" in warm_run.stderr


@pytest.mark.slow
@needs_crispml
def test_a_caller_killed_outright_takes_its_fork_with_it(warm_project) -> None:
    caller, fork = _sleeping_caller(*warm_project)
    assert fork != caller.pid
    caller.kill()
    caller.wait(timeout=10)
    assert _gone_within(fork, 10)


@pytest.mark.slow
@needs_crispml
def test_a_signal_to_the_caller_reaches_the_fork_and_its_exit(warm_project) -> None:
    caller, fork = _sleeping_caller(*warm_project)
    caller.send_signal(signal.SIGTERM)
    assert caller.wait(timeout=10) == -signal.SIGTERM  # as a command of its own would
    assert _gone_within(fork, 10)


@pytest.mark.slow
@needs_crispml
def test_switched_off_or_another_import_environment_means_a_process_of_its_own(
    warm_project,
) -> None:
    root, env = warm_project
    off = {**env, "CRISPML_WARM_START": "0"}
    assert crispml(root, off, "source").returncode == 0
    time.sleep(1)
    assert subprocess.run([CRISPML, "warm", "status"], env=off, check=False).returncode == 1
    crispml(root, env, "source")
    wait_until_ready(env)
    threads = {**env, "OMP_NUM_THREADS": "1"}
    crispml(root, threads, "source")
    assert perf(root)["warm_start"] is False  # no warm process for that environment yet
    wait_until_ready(threads)
    listed = json.loads(crispml(root, env, "warm", "status").stdout)
    assert len(listed) == 2 and sum(e["serves_this_interpreter"] for e in listed) == 1


def _sleeping_caller(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """A `crispml source` served by a ready warm process, its fork asleep; and the fork's pid."""
    crispml(root, env, "source")
    wait_until_ready(env)
    caller = subprocess.Popen(
        [CRISPML, "source"],
        cwd=root,
        env={**env, "WARM_TEST_SLEEP": "60"},
        stderr=subprocess.PIPE,
        text=True,
    )
    return caller, int(marker(caller.stderr.readline())["pid"])


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the warm process, has not reaped it).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_module_refuses_a_bad_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.warm", "nonsense"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage" in done.stderr
