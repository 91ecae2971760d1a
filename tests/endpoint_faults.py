"""The endpoint faults of the fault suite, shared by tests/test_faults_endpoint.py and benchmarks/faults.py.

A run's teacher is a deterministic fake OpenAI-compatible server (fault_proxy.FakeOpenAI), reached through a
fault proxy, and `kdistill elicit` runs in this process. Each kind of fault must give either exactly the clean
run's answers, or one clear line (exit 2, no traceback) with every answer so far kept in the journal: a re-run
once the fault is gone then asks the server only for the rest, and ends with the clean run's answers.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from fault_proxy import FakeOpenAI, FaultProxy
from faultkit import _main_captured

SECRET = "sk-fault-suite-0123456789"
KEY_ENV = "KDISTILL_FAULT_KEY"
COMPLETIONS = "/v1/completions"
SETTINGS = {"top_logprobs": 4, "max_concurrency": 2, "timeout_s": 0.5, "max_retries": 3, "backoff_s": 0.01,
            "max_backoff_s": 0.05, "api_key_env": KEY_ENV}


@dataclass
class EndpointCase:
    name: str
    plan: Callable[[int, str, float], str | None] | None = None
    """(request number, path, seconds since the start) -> a fault of fault_proxy, or None; None: no proxy."""
    expect: str | None = None
    """None: the clean run's answers; else a substring of the one error line."""
    settings: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    key: str = SECRET
    down: bool = False
    """Nothing listens at the teacher's URL."""
    refusal: bool = False
    """Asking again cannot help, so the line must not suggest it."""


def _every(k: int, fault: str, path: str = COMPLETIONS) -> Callable[[int, str, float], str | None]:
    return lambda n, p, t: fault if p == path and n % k == 0 else None


CASES = [
    EndpointCase("timeouts", _every(15, "timeout")),
    EndpointCase("HTTP 500 now and then", _every(5, "500")),
    EndpointCase("HTTP 429 with Retry-After", _every(6, "429")),
    EndpointCase("replies cut short", _every(5, "truncated")),
    EndpointCase("replies that are not JSON", _every(6, "not_json")),
    EndpointCase("replies without choices", _every(5, "missing")),
    EndpointCase("connections reset", _every(4, "reset")),
    EndpointCase("a server that echoes the API key", _every(9, "echo_key")),
    EndpointCase("GET /models failing twice at start-up", lambda n, p, t: "500" if p == "/v1/models" and n <= 2 else None),
    EndpointCase("slow at start-up", lambda n, p, t: "timeout" if p == "/v1/models" and n <= 2 else None),
    EndpointCase("down for a moment at start-up", lambda n, p, t: "reset" if t < 0.6 else None,
                 settings={"max_retries": 8, "backoff_s": 0.1, "max_backoff_s": 0.4}),
    EndpointCase("no /tokenize route", lambda n, p, t: "404" if p == "/tokenize" else None),
    EndpointCase("down at start-up", down=True, expect="the teacher's server did not answer: "),
    EndpointCase("GET /models failing at start-up", lambda n, p, t: "500" if p == "/v1/models" else None,
                 expect="/v1/models: HTTP 500"),
    EndpointCase("a wrong API key", key="sk-wrong", refusal=True, expect="HTTP 401"),
    EndpointCase("a key refused mid-run", lambda n, p, t: "403" if p == COMPLETIONS and n > 40 else None,
                 refusal=True, expect="refused the request (HTTP 403"),
    EndpointCase("a server without log-probabilities", lambda n, p, t: "no_logprobs" if p == COMPLETIONS else None,
                 refusal=True, expect="answers without log-probabilities"),
    EndpointCase("an unknown model", server={"model_ids": ("other-lm", "third-lm")}, refusal=True,
                 expect="does not serve teacher.model 'fake-lm'"),
    EndpointCase("an outage mid-run", lambda n, p, t: "500" if p == COMPLETIONS and n > 40 else None,
                 expect="could not get an answer after retrying"),
    EndpointCase("a wrong route", lambda n, p, t: "404" if p == COMPLETIONS else None, refusal=True,
                 expect="check teacher.endpoint.base_url"),
]


@dataclass
class EndpointOutcome:
    name: str
    ok: bool
    line: str
    detail: str = ""


def endpoint_config(base: dict[str, Any], folder: Path, url: str, settings: dict[str, Any]) -> Path:
    config = {**base, "output_dir": str(folder / "runs"),
              "teacher": {"model": "fake-lm", "name": "remote", "batch_size": 8, "few_shot_per_label": 1,
                          "endpoint": {"base_url": url, **SETTINGS, **settings}}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "endpoint.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _elicit(config: Path) -> torch.Tensor:
    from kdistill import api

    targets = api.elicit(str(config), progress=False).targets
    return targets.rows(sorted(targets.ids))


def clean_reference(base: dict[str, Any], folder: Path) -> tuple[torch.Tensor, int]:
    """The answers of a run against the fake server with no fault, and how many completions it asked."""
    import os

    os.environ[KEY_ENV] = SECRET
    with FakeOpenAI(api_key=SECRET) as server:
        values = _elicit(endpoint_config(base, folder, server.url, {}))
        return values, server.counts[COMPLETIONS]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_endpoint_case(case: EndpointCase, base: dict[str, Any], folder: Path,
                      reference: tuple[torch.Tensor, int]) -> EndpointOutcome:
    """`kdistill elicit` through the fault; then, against the fake with no fault, what was kept and what is
    asked again."""
    from kdistill.cli import main

    values, num_requests = reference
    with FakeOpenAI(api_key=SECRET, **case.server) as server:
        start = time.monotonic()
        proxy = FaultProxy(server.url, lambda n, p: case.plan(n, p, time.monotonic() - start), stall_s=1.0) \
            if case.plan is not None else None
        url = f"http://127.0.0.1:{_closed_port()}" if case.down else proxy.url if proxy else server.url
        config = endpoint_config(base, folder, url, case.settings)
        if proxy is not None:
            with proxy:
                code, stderr = _main_captured(main, ["elicit", str(config)], {KEY_ENV: case.key})
        else:
            code, stderr = _main_captured(main, ["elicit", str(config)], {KEY_ENV: case.key})
    lines = [line for line in stderr.splitlines() if line.strip() and "WARNING" not in line and " INFO " not in line]
    line = lines[-1] if lines else ""
    if SECRET in stderr:
        return EndpointOutcome(case.name, False, line, "the API key was repeated")
    if case.expect is None and code != 0:
        return EndpointOutcome(case.name, False, line, f"exit {code} where the clean run's answers were expected")
    if case.expect is not None:  # a closed progress bar may leave cursor moves before the error on its line
        errors = [x[x.index("kdistill:"):] for x in lines if "kdistill:" in x]
        line = errors[-1] if errors else line
        clear = (code == 2 and len(errors) == 1 and case.expect in errors[0] and "Traceback" not in stderr
                 and not (case.refusal and "max_retries" in errors[0]))
        if not clear:
            return EndpointOutcome(case.name, False, line, f"exit {code}; not the one clear line expected")
    return _rerun(case, base, folder, values, num_requests, line)


def _rerun(case: EndpointCase, base: dict[str, Any], folder: Path, values: torch.Tensor, num_requests: int,
           line: str) -> EndpointOutcome:
    """Against the fake with no fault, in the same run folder: the clean answers, asking only what is missing."""
    from kdistill.rundir import RunDir

    journal = RunDir(folder / "runs" / base["name"]).endpoint_journal("remote")
    kept = len(journal.read_text().splitlines()) if journal.exists() else 0
    with FakeOpenAI(api_key=SECRET) as server:
        again = _elicit(endpoint_config(base, folder, server.url, {}))
        asked = server.counts[COMPLETIONS]
    if not torch.equal(again, values):
        return EndpointOutcome(case.name, False, line, "the answers differ from the clean run's")
    if asked != num_requests - kept:
        return EndpointOutcome(case.name, False, line, f"the re-run asked {asked}, not the {num_requests - kept} "
                                                       f"missing of {num_requests}")
    return EndpointOutcome(case.name, True, line, f"{kept} answers kept, {asked} asked again")
