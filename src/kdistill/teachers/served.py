"""Teachers that kdistill serves itself: `teacher.endpoint.serve` starts llama.cpp's llama-server on the
teacher's GGUF, sized to the machine, and the endpoint teachers (labels, generation) then speak to it over
HTTP exactly as to a server the user runs.

    gguf_file(model)                      -> the .gguf to serve: a file, or a built-in model's GGUF
    serving(settings, model, config_key)  -> (EndpointConfig with the server's URL, the ManagedServer or None)
    session()                             -> a block that stops every server started inside it

One server per (GGUF, server settings) is shared by everything in one session (elicitation, then the teacher's
row on the card), and stopped when the session ends; atexit, SIGTERM and PR_SET_PDEATHSIG cover every other end
(`llama_server._install_cleanup`).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from kdistill.config import EndpointConfig
from kdistill.errors import KdistillError
from kdistill.teachers.llama_server import ManagedServer, auto_parallel, machine_cores

log = logging.getLogger(__name__)

_SERVERS: dict[tuple, ManagedServer] = {}
_LOCK = threading.Lock()


def gguf_file(model: str, config_key: str = "teacher") -> Path:
    """The GGUF that `endpoint.serve` serves for ``model``: a .gguf file, or a built-in model shipped as one."""
    from kdistill import assets

    if model in assets.ASSETS:
        if not assets.ASSETS[model].gguf:
            raise KdistillError(f"{config_key}.model {model!r} is a built-in model without a GGUF, which llama-server "
                                f"cannot serve; remove {config_key}.endpoint.serve to run it in-process.")
        return assets.fetch(model)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise KdistillError(f"{config_key}.model {model!r} is not a .gguf file or a built-in model with a GGUF; "
                        f"{config_key}.endpoint.serve starts llama-server on one (or give endpoint.base_url of a "
                        "server you run).")


def server_shape(settings: EndpointConfig) -> tuple[int, int]:
    """(threads, parallel slots) of the server: the settings', or sized to this machine's cores."""
    cores = machine_cores()
    return settings.threads or cores, settings.parallel or auto_parallel(cores)


def serving(settings: EndpointConfig, model: str, config_key: str = "teacher") -> tuple[EndpointConfig, ManagedServer | None]:
    """``settings`` pointed at a running server: unchanged for a server the user runs; for `serve`, a
    llama-server started (or the session's already running one) on ``model``'s GGUF, with as many requests in
    flight as it has slots."""
    if not settings.serve:
        return settings, None
    gguf = gguf_file(model, config_key).resolve()
    threads, parallel = server_shape(settings)
    key = (str(gguf), threads, parallel, settings.ctx_per_slot, tuple(settings.server_args))
    with _LOCK:
        server = _SERVERS.get(key)
        if server is None or server.process is None or server.process.poll() is not None:
            log.info("starting llama-server on %s (%d threads, %d slots of %d tokens)", gguf.name, threads,
                     parallel, settings.ctx_per_slot)
            server = ManagedServer(gguf, ctx_size=parallel * settings.ctx_per_slot, threads=threads,
                                   parallel=parallel, extra_args=tuple(settings.server_args))
            server.start()
            _SERVERS[key] = server
    # the URL is no part of any cache key, so a restarted server (same port) or another run's serves the same
    return replace(settings, serve=False, base_url=server.base_url,
                   max_concurrency=max(settings.max_concurrency, parallel)), server


def stop_servers() -> None:
    """Stop every server `serving` started (the end of a session)."""
    with _LOCK:
        for server in _SERVERS.values():
            server.close()
        _SERVERS.clear()


@contextmanager
def session() -> Iterator[None]:
    """Every server `serving` starts inside this block is stopped when it ends, however it ends."""
    try:
        yield
    finally:
        stop_servers()
