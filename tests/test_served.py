"""Served teachers: generation targets and token-level rows from a server, the tokenizer check, faults, and the
server kdistill starts itself (never left running).

Fast tests speak to tests/fake_llama.py: a loopback stand-in for llama-server (and for vLLM's echo scoring) that
computes every log-probability with the same tiny in-process LM the in-process teacher uses, so served and
in-process rows can be compared number for number. The tests that start a real llama-server skip when the
binary (.ci/llama_server.sh) or the Gemma GGUF is missing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_tiny_lm
from fake_llama import FakeLlama
from fault_proxy import FaultProxy
from kdistill.config import EndpointConfig
from kdistill.errors import KdistillError
from kdistill.teachers.served_tokens import rows_to_arrays, top_row
from test_gen_pipeline import _gen_config

FAST = dict(timeout_s=5, max_retries=6, backoff_s=0.01, max_backoff_s=0.05, max_concurrency=3)


def served_config(tmp_path, tiny_models, url: str, **sections):
    """The tiny QA job with its teacher behind ``url`` (the student shares the teacher's tokenizer)."""
    teacher = {"model": "fake.gguf", "endpoint": {"base_url": url, **FAST}, "token_top_k": 8}
    return _gen_config(tmp_path, tiny_models, **{"teacher": teacher, **sections})


def in_process_rows(tmp_path, tiny_models, **sections) -> dict:
    from kdistill.data.gen_data import prepare_generation
    from kdistill.teachers.generation import targets_for

    (tmp_path / "local").mkdir(exist_ok=True)
    cfg = _gen_config(tmp_path / "local", tiny_models, teacher={"token_top_k": 8}, **sections)
    targets = targets_for(cfg, prepare_generation(cfg.data, cfg.task), progress=False)
    return {i: (targets.entry.tokens(i), targets.entry.generation(i)) for i in targets.entry.ids()}


def served_rows(cfg) -> dict:
    from kdistill.data.gen_data import prepare_generation
    from kdistill.teachers.generation import targets_for

    targets = targets_for(cfg, prepare_generation(cfg.data, cfg.task), progress=False)
    return {i: (targets.entry.tokens(i), targets.entry.generation(i)) for i in targets.entry.ids()}


def assert_same_rows(served: dict, local: dict) -> None:
    assert served.keys() == local.keys()
    for i in local:
        (s, s_gen), (r, r_gen) = served[i], local[i]
        assert s_gen == r_gen, i  # the same written target (or none for data-given targets)
        assert torch.equal(s.token_ids[:, 0], r.token_ids[:, 0]), i  # the same top-1 at every target token
        top = torch.isfinite(r.logprobs)
        assert torch.allclose(s.logprobs[top], r.logprobs[top], atol=1e-4), i
        assert torch.allclose(s.tail_logmass, r.tail_logmass, atol=1e-3), i


# ------------------------------------------------------------------------------------------------
# served rows equal in-process rows


@pytest.mark.parametrize("targets", ["data", "teacher"])
def test_served_rows_equal_the_in_process_teachers(tmp_path, tiny_models, targets):
    """Teacher-forced scoring of given targets, and greedy writing with the rows kept while writing: both give the
    in-process teacher's cache rows (the fake computes with the same weights)."""
    task = {"targets": targets, **({"evaluate_as": "summary", "prompt_template": "{text} Summary:"}
                                   if targets == "teacher" else {})}
    local = in_process_rows(tmp_path, tiny_models, task=task)
    with FakeLlama(tiny_models["lm"]) as fake:
        served = served_rows(served_config(tmp_path, tiny_models, fake.url, task=task))
        if targets == "teacher":  # one request writes and scores; one more scores the EOS after a cut-off target
            assert fake.counts["/completion"] <= 2.5 * len(served)  # (scoring each token anew: 1 + 5 each)
    assert_same_rows(served, local)


def test_served_teachers_form_an_ensemble_like_in_process_ones(tmp_path, tiny_models):
    """A served first teacher and a served member (each on its own server) give the per-token mixture that the
    same two teachers give in-process; a member that tokenizes differently is refused in one line naming it."""
    from kdistill.config import RunConfig, from_dict
    from kdistill.data.gen_data import prepare_generation
    from kdistill.teachers.generation import targets_for
    from test_gen_pipeline import _gen_config_dict

    member_dir = save_tiny_lm(tmp_path / "lm3", seed=2)

    def mixed(folder, teacher: dict, member: dict) -> dict:
        config = _gen_config_dict(tmp_path / folder, tiny_models, teacher=teacher, ensemble={"combine": "mean"})
        cfg = from_dict(RunConfig, config | {"teachers": [{"name": "lm3", "token_top_k": 8, **member}]})
        data = prepare_generation(cfg.data, cfg.task)
        targets = targets_for(cfg, data, progress=False)
        return {e.id: targets.ensemble.rows(targets.entry.tokens(e.id), e.id) for e in data.train}

    (tmp_path / "local").mkdir()
    local = mixed("local", {"token_top_k": 8}, {"model": str(member_dir)})
    (tmp_path / "served").mkdir()
    with FakeLlama(tiny_models["lm"]) as first, FakeLlama(member_dir) as member:
        served = mixed("served", {"model": "fake.gguf", "endpoint": {"base_url": first.url, **FAST}},
                       {"model": "fake3.gguf", "endpoint": {"base_url": member.url, **FAST}})
    assert served.keys() == local.keys()
    for i in local:
        assert torch.equal(served[i].token_ids[:, 0], local[i].token_ids[:, 0]), i
        assert torch.equal(served[i].token_ids, local[i].token_ids), i  # the same mixed top-k ids
        top = torch.isfinite(local[i].logprobs)
        torch.testing.assert_close(served[i].logprobs[top], local[i].logprobs[top], atol=1e-4, rtol=0)

    (tmp_path / "other").mkdir()
    with FakeLlama(tiny_models["lm"]) as first, FakeLlama(member_dir, tokenize_offset=1) as member:
        with pytest.raises(KdistillError, match=r"teachers\[0\] \('lm3'\) tokenizes differently") as err:
            mixed("other", {"model": "fake.gguf", "endpoint": {"base_url": first.url, **FAST}},
                  {"model": "fake3.gguf", "endpoint": {"base_url": member.url, **FAST}})
    assert "\n" not in str(err.value)


def test_vllm_echo_scoring_gives_the_same_rows(tmp_path, tiny_models):
    """A server without llama.cpp's routes (vLLM) scores a whole target in one echo request; its layout (a dict per
    position holding the top-k and the actual token, the first None, "token_id:N" names) gives the same rows."""
    local = in_process_rows(tmp_path, tiny_models)
    with FakeLlama(tiny_models["lm"], llama_cpp=False) as fake:
        served = served_rows(served_config(tmp_path, tiny_models, fake.url))
        assert fake.counts["/v1/completions"] == len(served) and not fake.counts["/completion"]
    assert_same_rows(served, local)


def test_recorded_vllm_reply_parses_to_rows():
    """A vLLM 0.x /v1/completions reply with echo and logprobs=2 (recorded layout): positions after the prompt."""
    reply = {"choices": [{"text": "", "logprobs": {
        "tokens": ["token_id:5", "token_id:7", "token_id:9"], "token_logprobs": [None, -0.5, -1.2],
        "top_logprobs": [None, {"token_id:7": -0.5, "token_id:3": -1.5}, {"token_id:2": -0.4, "token_id:9": -1.2,
                                                                          "token_id:4": -2.5}]}}]}
    from kdistill.cache.openai import token_lookup

    to_id = token_lookup({})
    rows = [top_row(t, to_id) for t in reply["choices"][0]["logprobs"]["top_logprobs"][1:]]
    assert rows == [([7, 3], [-0.5, -1.5]), ([2, 9, 4], [-0.4, -1.2, -2.5])]
    ids_tk, logprobs_tk, tail_t = rows_to_arrays(rows, 2)  # cut to k, most probable first
    assert ids_tk.tolist() == [[7, 3], [2, 9]]
    assert tail_t[1] == pytest.approx(math.log(1 - math.exp(-0.4) - math.exp(-1.2)), rel=1e-5)
    ids_tk, logprobs_tk, _ = rows_to_arrays([([4], [-0.1])], 3)  # padded with unused ids at -inf
    assert ids_tk.tolist() == [[4, 0, 1]] and np.isneginf(logprobs_tk[0, 1:]).all()


def test_a_llama_cpp_reply_stopped_inside_a_token_is_accepted():
    """Recorded from llama-server (bbc-summary's teacher): the first token ".\n" holds the stop word "\n", so the
    content is cut to "." and llama.cpp drops that token's probabilities. A reply that lost them otherwise is retried."""
    from kdistill.teachers.http import RetryableError
    from kdistill.teachers.served_tokens import _check_written

    stopped = {"index": 0, "content": ".", "tokens": [624], "stop": True, "stop_type": "word", "stopping_word": "\n",
               "tokens_predicted": 1, "tokens_evaluated": 152}  # no completion_probabilities field at all
    _check_written(stopped)
    with pytest.raises(RetryableError, match="without completion_probabilities"):
        _check_written(stopped | {"stop_type": "limit", "completion_probabilities": []})


# ------------------------------------------------------------------------------------------------
# the tokenizer check


def test_a_server_with_another_tokenizer_stops_with_a_clear_error_or_falls_back(tmp_path, tiny_models):
    from kdistill.data.gen_data import prepare_generation
    from kdistill.teachers.generation import targets_for

    task = {"targets": "teacher", "evaluate_as": "summary", "prompt_template": "{text} Summary:"}
    with FakeLlama(tiny_models["lm"], tokenize_offset=1) as fake:
        cfg = served_config(tmp_path, tiny_models, fake.url, task=task)
        with pytest.raises(KdistillError, match="share a tokenizer.*first differing at token 0.*tokenizer_mismatch"):
            targets_for(cfg, prepare_generation(cfg.data, cfg.task), progress=False)
        cfg.teacher.endpoint.tokenizer_mismatch = "sequence_kd"
        targets = targets_for(cfg, prepare_generation(cfg.data, cfg.task), progress=False)
    assert not targets.token_rows and targets.entry.fields["token_rows"] is False
    some = targets.entry.ids()[0]
    assert targets.entry.generation(some)[1] == 0 and targets.entry.tokens(some).token_ids.shape == (1, 1)


# ------------------------------------------------------------------------------------------------
# faults


def test_faults_are_retried_and_the_rows_are_unchanged(tmp_path, tiny_models):
    """5xx, timeouts, cut-short and malformed replies (no probabilities) on every fourth request: the same rows."""
    local = in_process_rows(tmp_path, tiny_models)
    faults = ["500", "timeout", "truncated", "missing", "not_json", "reset"]
    with FakeLlama(tiny_models["lm"]) as fake, \
            FaultProxy(fake.url, lambda n, path: faults[n // 4 % len(faults)] if n % 4 == 0 else None,
                       stall_s=0.5) as proxy:
        cfg = served_config(tmp_path, tiny_models, proxy.url)
        cfg.teacher.endpoint.timeout_s = 0.3
        served = served_rows(cfg)
    assert set(proxy.faults_injected()) == set(faults)
    assert_same_rows(served, local)


def test_after_the_retry_budget_a_clear_error_and_nothing_half_written(tmp_path, tiny_models):
    from kdistill.cache.entry import open_entry

    with FakeLlama(tiny_models["lm"]) as fake, \
            FaultProxy(fake.url, lambda n, path: "500" if n > 40 and path == "/completion" else None) as proxy:
        cfg = served_config(tmp_path, tiny_models, proxy.url)
        with pytest.raises(KdistillError, match="could not answer after retrying.*re-run asks only for the rest"):
            served_rows(cfg)
    folders = [p for p in cfg.paths.teacher_cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and not (folders[0] / "manifest.json").exists()
    assert not list(folders[0].rglob("*.tmp"))
    with FakeLlama(tiny_models["lm"]) as fake:  # the server is back: the rest is asked, the entry completes
        cfg = served_config(tmp_path, tiny_models, fake.url)
        rows = served_rows(cfg)
        asked_again = fake.counts["/completion"]
    assert open_entry(folders[0]).complete and asked_again < sum(r[0].token_ids.shape[0] for r in rows.values())


# ------------------------------------------------------------------------------------------------
# the config


def test_serve_and_base_url_are_one_or_the_other():
    with pytest.raises(KdistillError, match="either base_url.*or serve: true"):
        EndpointConfig()
    with pytest.raises(KdistillError, match="either base_url"):
        EndpointConfig(base_url="http://127.0.0.1:1/v1", serve=True)
    assert EndpointConfig(serve=True).parallel == 0
    with pytest.raises(KdistillError, match="teacher.endpoint.threads must be >= 0"):
        EndpointConfig(serve=True, threads=-1)


def test_serving_names_a_missing_gguf_and_a_built_in_without_one(tmp_path):
    from kdistill.teachers.served import gguf_file

    with pytest.raises(KdistillError, match="teacher.model .*not a .gguf file"):
        gguf_file(str(tmp_path / "nothing.gguf"))
    with pytest.raises(KdistillError, match="without a GGUF"):
        gguf_file("all-MiniLM-L6-v2")


def test_the_server_is_sized_to_the_machine(monkeypatch):
    from kdistill.teachers import served

    monkeypatch.setattr(served, "machine_cores", lambda: 2)
    assert served.server_shape(EndpointConfig(serve=True)) == (2, 4)
    assert served.server_shape(EndpointConfig(serve=True, threads=1, parallel=3)) == (1, 3)
    monkeypatch.setattr(served, "machine_cores", lambda: 64)
    assert served.server_shape(EndpointConfig(serve=True))[1] == 8


# ------------------------------------------------------------------------------------------------
# never an orphaned server: a stand-in binary, killed with kdistill


FAKE_BINARY = textwrap.dedent("""\
    #!{python}
    # a stand-in llama-server: answers /health on --port until killed, and says where it is
    import http.server, os, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    open(os.environ["PIDS"], "a").write(f"{{os.getpid()}}\\n")
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")

CHILD = textwrap.dedent("""\
    import sys, time
    from kdistill.teachers.llama_server import ManagedServer
    server = ManagedServer(sys.argv[1], binary=sys.argv[2], startup_timeout_s=30)
    server.start()
    print("started", flush=True)
    if sys.argv[3] == "worker":  # a restart from a worker thread must survive that thread
        import threading
        server.process.kill(); server.process.wait()
        t = threading.Thread(target=server.revive); t.start(); t.join()
        print("revived", flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())  # a zombie is dead, awaiting its parent


def _wait_dead(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "worker"])
def test_a_started_server_never_outlives_kdistill(tmp_path, how):
    """kill -9 (PR_SET_PDEATHSIG), kill (the SIGTERM handler), and a server restarted from a worker thread that
    has since ended, then kill -9: every server PID kdistill started is gone."""
    binary = tmp_path / "llama-server"
    binary.write_text(FAKE_BINARY.format(python=sys.executable))
    binary.chmod(0o755)
    pids_file = tmp_path / "pids"
    env = {**os.environ, "PIDS": str(pids_file), "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "m.gguf"), str(binary), how],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "started"
        if how == "worker":
            assert child.stdout.readline().strip() == "revived"
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == (2 if how == "worker" else 1) and _alive(pids[-1])
        child.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        child.wait(timeout=20)
        assert _wait_dead(pids) == []
    finally:
        if child.poll() is None:
            child.kill()


# ------------------------------------------------------------------------------------------------
# a real llama-server that kdistill starts on the Gemma-3-270m GGUF


ELICIT = textwrap.dedent("""\
    import sys
    from kdistill import api
    from kdistill.config import load_config
    cfg = load_config("sentiment-prompted", {"output_dir": sys.argv[1], "data.max_examples": int(sys.argv[2]),
                             "teacher.endpoint.serve": True, "teacher.endpoint.parallel": 1,
                             "teacher.endpoint.extra_body": {"cache_prompt": sys.argv[3] == "cache"},
                             "teacher.endpoint.backoff_s": 0.1, "teacher.endpoint.max_backoff_s": 0.5})
    api.elicit(cfg, progress=False)
    print("done", flush=True)
""")


@pytest.fixture(scope="module")
def real_server_ready():
    from kdistill import assets
    from kdistill.teachers.llama_server import find_binary

    if find_binary() is None:
        pytest.skip("no llama-server binary: run .ci/llama_server.sh (CI does) or set KDISTILL_LLAMA_SERVER")
    return assets.fetch("gemma-3-270m")  # prepared before any timing starts


def _servers_of(pid: int) -> list[int]:
    """PIDs of the llama-server processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and name.startswith("llama-server"):
            found.append(int(stat.parent.name))
    return found


def _elicit(out: Path, examples: int, cache: str = "no-cache") -> subprocess.Popen:
    """kdistill elicit in a child process; ``cache``: whether the server reuses cached prompt prefixes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", ELICIT, str(out), str(examples), cache], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _run_to_end(child: subprocess.Popen, seen: set[int]) -> None:
    """Wait for ``child``, noting every llama-server it starts; it must succeed."""
    while child.poll() is None:
        seen.update(_servers_of(child.pid))
        time.sleep(0.05)
    output = child.stdout.read()
    assert child.returncode == 0 and "done" in output, output[-3000:]


def _cache_files(out: Path) -> dict[str, bytes]:
    """The finished teacher cache, file by file (not the journal of raw replies, nor the lock)."""
    root = out / "sentiment-prompted" / "teacher_cache"
    # last_elicitation-*.json is the cost record of the latest `elicit` (calls, seconds): a resumed run asked fewer
    # questions in other seconds, so it differs by design; the answers are everything else
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "endpoint-journals" not in p.parts and p.name != ".lock"
            and not p.name.startswith("last_elicitation-")}


def test_kill_9_during_served_elicitation_leaves_no_server_and_the_rerun_matches(tmp_path, real_server_ready):
    """kdistill killed by SIGKILL mid-elicitation: its llama-server (found by PID as its child) dies with it; the
    re-run asks only for what the journal lacks, and its finished cache is byte-identical to an uninterrupted run's.
    The server computes every prompt whole (cache_prompt off): with its prompt cache on, llama.cpp's answer to the
    same prompt differs in the last bits with what the slot had cached (measured: the caches then differ), so byte
    identity is a property of the journal and the resume only when the server itself answers deterministically."""
    examples = 120
    seen: set[int] = set()
    whole = _elicit(tmp_path / "whole", examples)
    _run_to_end(whole, seen)
    killed = _elicit(tmp_path / "killed", examples)
    journal = tmp_path / "killed" / "sentiment-prompted" / "teacher_cache" / "endpoint-journals" / "gemma-3-270m.jsonl"
    _wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 30)
    servers = _servers_of(killed.pid)
    assert len(servers) == 1
    killed.kill()
    killed.wait()
    assert _wait_dead(servers) == [], "llama-server outlived kdistill"
    asked_before = len(journal.read_text().splitlines())
    rerun = _elicit(tmp_path / "killed", examples)
    _run_to_end(rerun, seen)
    assert asked_before < len(journal.read_text().splitlines())
    assert _wait_dead(sorted(seen)) == [], "a llama-server outlived the run that started it"
    assert _cache_files(tmp_path / "killed") == _cache_files(tmp_path / "whole")


def test_a_server_killed_mid_run_is_started_again_and_the_run_completes(tmp_path, real_server_ready):
    examples = 120
    child = _elicit(tmp_path / "run", examples, "cache")
    journal = tmp_path / "run" / "sentiment-prompted" / "teacher_cache" / "endpoint-journals" / "gemma-3-270m.jsonl"
    _wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 20)
    first = _servers_of(child.pid)
    assert len(first) == 1
    os.kill(first[0], signal.SIGKILL)
    seen: set[int] = set(first)
    _run_to_end(child, seen)
    assert len(seen) >= 2, "no second server was started"
    assert _wait_dead(sorted(seen)) == []
    manifests = list((tmp_path / "run" / "sentiment-prompted" / "teacher_cache").rglob("manifest.json"))
    assert manifests, "the teacher cache was not finished"


def test_a_session_shares_one_server_and_stops_it_at_its_end(tmp_path, monkeypatch):
    """Within one command the label teacher and the card's timing share a server; the command's end stops it."""
    from kdistill.teachers import served

    binary = tmp_path / "llama-server"
    binary.write_text(FAKE_BINARY.format(python=sys.executable))
    binary.chmod(0o755)
    monkeypatch.setenv("KDISTILL_LLAMA_SERVER", str(binary))
    monkeypatch.setenv("PIDS", str(tmp_path / "pids"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with served.session():
        first, server = served.serving(EndpointConfig(serve=True, parallel=3), str(gguf))
        again, same = served.serving(EndpointConfig(serve=True, parallel=3), str(gguf))
        assert same is server and again.base_url == first.base_url == server.base_url
        assert first.max_concurrency == 4 and not first.serve  # at least the slots, and a plain URL from here on
        assert "-np" in server.command and server.command[server.command.index("-np") + 1] == "3"
        pid = server.pid
        assert _alive(pid)
    assert _wait_dead([pid]) == []
    # a worker still retrying when the session ended (or on SIGTERM) must not start it again
    with pytest.raises(KdistillError, match="was stopped"):
        server.revive()
    assert [int(p) for p in (tmp_path / "pids").read_text().split()] == [pid]


def test_real_served_generation_teacher_agrees_with_the_in_process_one(tmp_path, real_server_ready):
    """Gemma-3-270m served by kdistill writes targets for a few prompts and gives its rows; the in-process teacher
    (the same GGUF in fp32), teacher-forced on those targets, has the same top-1 at most target tokens (llama.cpp
    multiplies Q4 weights with 8-bit activations, so not all), and the tokenizer check passes."""
    from kdistill.config import RunConfig, from_dict
    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.models import resolve_model_path
    from kdistill.models.generative import load_causal_lm
    from kdistill.models.token_rows import token_targets
    from kdistill.teachers.generation import targets_for
    from kdistill.teachers.served import session

    articles = tmp_path / "articles.jsonl"
    lines = [f"The council of town number {i} voted on {topic} after a long debate on Tuesday evening."
             for i, topic in enumerate(["a new bridge", "school meals", "bus fares", "a park", "the library",
                                        "street lights", "parking", "a festival"])]
    articles.write_text("".join(json.dumps({"text": t, "target": "x"}) + "\n" for t in lines))
    cfg = from_dict(RunConfig, {
        "name": "served-gen", "output_dir": str(tmp_path / "runs"),
        "task": {"name": "news", "kind": "generation", "targets": "teacher", "evaluate_as": "summary",
                 "max_new_tokens": 12, "prompt_template": "Article: {text}\nOne-line summary:"},
        "data": {"source": "jsonl", "path": str(articles), "test_fraction": 0.25, "validation_fraction": 0.125},
        "teacher": {"model": "gemma-3-270m", "token_top_k": 8, "endpoint": {"serve": True, "parallel": 2}},
        "student": {"model": "gemma-3-270m", "max_length": 96},
        "evaluation": {"seeds": [0], "similarity_model": ""}})
    data = prepare_generation(cfg.data, cfg.task)
    with session():
        targets = targets_for(cfg, data, progress=False)
    examples = data.train + data.validation + data.test
    assert targets.entry.complete and targets.token_rows and len(targets.entry.ids()) == len(examples)
    module, tokenizer = load_causal_lm(cfg.student, torch.device("cpu"))
    assert resolve_model_path(cfg.student.model)
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in examples]
    written = [targets.target(e) for e in examples]
    local = token_targets(module, tokenizer, prompts, written, k=8, max_length=96)
    pairs = [(a, b) for e, row in zip(examples, local)
             for a, b in zip(targets.entry.tokens(e.id).token_ids[:, 0].tolist(), row.token_ids[:, 0].tolist())]
    assert all(targets.entry.tokens(e.id).token_ids.shape[0] == row.token_ids.shape[0] for e, row in zip(examples, local))
    assert sum(a == b for a, b in pairs) / len(pairs) >= 0.8
