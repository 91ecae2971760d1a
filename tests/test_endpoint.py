"""The endpoint teacher: label scores from top log-probs, and nothing lost or changed by a faulty server.

Fast tests run against a deterministic fake OpenAI-compatible server behind a loopback fault proxy
(tests/fault_proxy.py). The slow tests start a real llama-server on the Gemma-3-270m GGUF (built by
.ci/llama_server.sh) and compare it with the in-process Gemma teacher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import threading
import time

import pytest
import torch

from fault_proxy import FAULTS, FakeOpenAI, FaultProxy, fake_logprobs
from kdistill.config import EndpointConfig
from kdistill.errors import KdistillError
from kdistill.teachers import endpoint
from kdistill.teachers.endpoint import Candidate, EndpointLabelModel, LabelToken, label_scores, parse_top_logprobs
from kdistill.teachers.http import Journal, RetryableError
from kdistill.teachers.llama_server import llama_server

TEMPLATE = "Review: {text}\nSentiment:"
TEXTS = [f"review number {i}: {'great' if i % 2 else 'dull'} film" for i in range(24)]
IDS = [f"ex{i}" for i in range(len(TEXTS))]


def teacher(url: str, journal, **settings) -> EndpointLabelModel:
    options = dict(base_url=url, top_logprobs=4, max_concurrency=3, timeout_s=0.5, max_retries=6, backoff_s=0.01,
                   max_backoff_s=0.05)
    return EndpointLabelModel(EndpointConfig(**{**options, **settings}), model="fake-lm", labels=["negative", "positive"],
                              verbalizers=[" negative", " positive"], prompt_template=TEMPLATE, prefix="",
                              journal_path=journal)


def journal_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# label scores: pure functions


def test_missing_label_gets_the_bound_the_reply_allows_never_zero():
    top = [Candidate(" positive", 1, math.log(0.6)), Candidate(" the", 2, math.log(0.3))]
    scores, missing = label_scores(top, [LabelToken(" negative", 0), LabelToken(" positive", 1)])
    assert missing == [True, False]
    assert scores[1] == pytest.approx(math.log(0.6))
    assert scores[0] == pytest.approx(math.log(0.1))  # leftover 0.1, below the smallest listed (0.3)
    # two missing labels share the leftover, and neither may exceed the smallest listed probability
    top = [Candidate(" the", 2, math.log(0.5)), Candidate(" a", 3, math.log(0.02))]
    scores, missing = label_scores(top, [LabelToken(" negative", 0), LabelToken(" positive", 1)])
    assert missing == [True, True] and scores == pytest.approx([math.log(0.02)] * 2)
    # a top-N that holds all the mass leaves nothing: floored, still finite
    scores, _ = label_scores([Candidate(" positive", 1, 0.0)], [LabelToken(" negative", 0), LabelToken(" positive", 1)])
    assert scores[0] == pytest.approx(math.log(endpoint.MISSING_FLOOR)) and scores[1] == 0.0


def test_completion_matches_ids_chat_matches_text_with_or_without_space():
    top = [Candidate(" positive", 7, math.log(0.5)), Candidate("positive", 8, math.log(0.2)),
           Candidate(" negative", 9, math.log(0.1))]
    labels = [LabelToken(" negative", 9), LabelToken(" positive", 7)]
    assert label_scores(top, labels)[0] == pytest.approx([math.log(0.1), math.log(0.5)])
    assert label_scores(top, labels, chat=True)[0] == pytest.approx([math.log(0.1), math.log(0.7)])
    by_text = [LabelToken(" negative"), LabelToken(" positive")]  # no ids: a hosted API without /tokenize
    assert label_scores(top, by_text)[0] == pytest.approx([math.log(0.1), math.log(0.5)])


def test_both_reply_layouts_parse_and_malformed_ones_are_retryable():
    content = {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": " a", "id": 3, "logprob": -0.1}]}]}}]}
    legacy = {"choices": [{"logprobs": {"top_logprobs": [{" a": -0.1, " b": -2.5}]}}]}
    assert parse_top_logprobs(content) == [Candidate(" a", 3, -0.1)]
    assert parse_top_logprobs(legacy) == [Candidate(" a", None, -0.1), Candidate(" b", None, -2.5)]
    for bad in ({}, {"choices": []}, {"choices": [{"logprobs": None}]}, [1, 2],
                {"choices": [{"logprobs": {"content": [{"top_logprobs": []}]}}]},
                {"choices": [{"logprobs": {"top_logprobs": [{" a": "nan"}]}}]}):
        with pytest.raises(RetryableError):
            parse_top_logprobs(bad)


def test_settings_reject_credentials_in_the_url_and_complete_a_bare_host():
    with pytest.raises(KdistillError, match="without credentials"):
        EndpointConfig(base_url="https://user:sk-123@api.example.com/v1")
    assert EndpointConfig(base_url="http://127.0.0.1:8080/").base_url == "http://127.0.0.1:8080/v1"
    assert EndpointConfig(base_url="http://h:1/v1").server_root == "http://h:1"
    with pytest.raises(KdistillError, match="max_concurrency"):
        EndpointConfig(base_url="http://h:1", max_concurrency=0)


# ------------------------------------------------------------------------------------------------
# against the fake server


def expected_scores(texts: list[str], top_n: int) -> torch.Tensor:
    """What the fake server's answers must map to, computed from its formula directly."""
    rows = []
    for text in texts:
        top = [Candidate(f"t{i}", i, lp) for i, lp in fake_logprobs(TEMPLATE.replace("{text}", text))[:top_n]]
        rows.append(label_scores(top, [LabelToken(" negative", 1), LabelToken(" positive", 0)])[0])
    return torch.tensor(rows)


def test_scores_match_the_server_and_concurrency_is_bounded(tmp_path):
    with FakeOpenAI(delay_s=0.03) as server:
        model = teacher(server.url, tmp_path / "j.jsonl", max_concurrency=3)
        logprobs_bl, missing_bl = model.label_logprobs(TEXTS, IDS)
    torch.testing.assert_close(logprobs_bl, expected_scores(TEXTS, 4))
    assert missing_bl.any() and not missing_bl.all()  # top-4 of 12 tokens: some labels fall outside
    assert 2 <= server.max_in_flight <= 3
    assert server.counts["/v1/completions"] == len(TEXTS)


@pytest.mark.parametrize("legacy", [False, True])
def test_faults_lose_nothing_and_change_nothing(tmp_path, legacy):
    with FakeOpenAI(legacy=legacy) as server:
        clean = teacher(server.url, tmp_path / "clean.jsonl").label_logprobs(TEXTS, IDS)
        faults = [f for f in FAULTS if f != "echo_key"]
        plan = lambda n, path: faults[n % len(faults)] if n % 2 else None  # every other request fails
        with FaultProxy(server.url, plan, stall_s=1.0) as proxy:
            model = teacher(proxy.url, tmp_path / "faulty.jsonl")
            faulty = model.label_logprobs(TEXTS, IDS)
    assert set(proxy.faults_injected()) == set(faults)
    torch.testing.assert_close(faulty[0], clean[0])
    assert torch.equal(faulty[1], clean[1])
    records = journal_records(tmp_path / "faulty.jsonl")
    assert len(records) == len(TEXTS) == len({r["key"] for r in records})
    assert sorted(r["id"] for r in records) == sorted(IDS)
    assert model.stats()["retries"] >= len(proxy.events) // 2 - 1


def test_retry_after_pauses_the_client(tmp_path):
    plan = lambda n, path: "429" if path == "/v1/completions" and n <= 4 else None
    with FakeOpenAI() as server, FaultProxy(server.url, plan, retry_after="1") as proxy:
        model = teacher(proxy.url, tmp_path / "j.jsonl", max_concurrency=1)
        model.label_logprobs(TEXTS[:2])
    times = [t for _, path, _, t in proxy.events if path == "/v1/completions"]
    assert times[1] - times[0] >= 0.95  # honoured Retry-After: 1, not the 0.01 s back-off


def test_crash_mid_run_then_rerun_asks_only_the_rest(tmp_path, monkeypatch):
    journal = tmp_path / "j.jsonl"
    original = Journal.append
    kept = []

    lock = threading.Lock()

    def append_then_crash(self, record):
        with lock:  # two workers must not both slip past the 10th answer
            if len(kept) >= 10:
                raise RuntimeError("injected crash after 10 answers")
            original(self, record)
            kept.append(record["key"])

    with FakeOpenAI() as server:
        reference = teacher(server.url, tmp_path / "ref.jsonl").label_logprobs(TEXTS, IDS)
        server.counts.clear()
        monkeypatch.setattr(Journal, "append", append_then_crash)
        with pytest.raises(RuntimeError, match="injected crash"):
            teacher(server.url, journal, max_concurrency=2).label_logprobs(TEXTS, IDS)
        monkeypatch.setattr(Journal, "append", original)
        assert len(journal_records(journal)) == 10
        asked_before = server.counts["/v1/completions"]
        rerun = teacher(server.url, journal).label_logprobs(TEXTS, IDS)
    assert server.counts["/v1/completions"] - asked_before == len(TEXTS) - 10
    torch.testing.assert_close(rerun[0], reference[0])
    records = journal_records(journal)
    assert len(records) == len(TEXTS) == len({r["key"] for r in records})


def test_outage_raises_a_clear_error_keeps_answers_and_a_rerun_finishes(tmp_path):
    journal = tmp_path / "j.jsonl"
    down = {"on": False}
    plan = lambda n, path: "500" if down["on"] and path == "/v1/completions" else None
    with FakeOpenAI() as server, FaultProxy(server.url, plan) as proxy:
        model = teacher(proxy.url, journal, max_retries=2)
        model.label_logprobs(TEXTS[:8], IDS[:8])
        down["on"] = True
        with pytest.raises(KdistillError, match=r"after retrying: .*HTTP 500.* 8 answers are kept in .*j\.jsonl "
                                                r"\(8 of them asked by this run\).*teacher\.endpoint\.max_retries"):
            model.label_logprobs(TEXTS, IDS)
        down["on"] = False
        server.counts.clear()
        model.label_logprobs(TEXTS, IDS)
    assert server.counts["/v1/completions"] == 16
    assert len(journal_records(journal)) == 24


def test_a_request_the_server_rejects_stops_the_run_and_keeps_the_other_answers(tmp_path):
    texts = TEXTS[:12] + ["<too long>"] + TEXTS[12:]
    with FakeOpenAI() as server:
        with pytest.raises(KdistillError, match=r"cannot go on: .*exceeds the available context size.* answers "
                                                r"are kept") as err:
            teacher(server.url, tmp_path / "j.jsonl", max_concurrency=2).label_logprobs(texts)
    assert "max_retries" not in str(err.value)  # asking again cannot help
    kept = int(re.search(r"(\d+) answers are kept", str(err.value)).group(1))
    assert 1 <= kept == len(journal_records(tmp_path / "j.jsonl")) < 25


def test_truncated_journal_line_is_asked_again_without_duplicates(tmp_path):
    journal = tmp_path / "j.jsonl"
    with FakeOpenAI() as server:
        reference = teacher(server.url, journal).label_logprobs(TEXTS[:6])[0]
        lines = journal.read_text().splitlines()
        journal.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # a crash cut the last line short
        server.counts.clear()
        again = teacher(server.url, journal).label_logprobs(TEXTS[:6])[0]
    assert server.counts["/v1/completions"] == 1
    torch.testing.assert_close(again, reference)
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    assert len(records) == 6 == len({r["key"] for r in records})


def test_api_key_is_sent_but_never_logged_kept_or_repeated(tmp_path, monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("KDISTILL_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    plan = lambda n, path: "echo_key" if n in (3, 5) else None
    with FakeOpenAI(api_key=secret) as server, FaultProxy(server.url, plan) as proxy:
        model = teacher(proxy.url, tmp_path / "j.jsonl", api_key_env="KDISTILL_TEST_KEY")
        model.label_logprobs(TEXTS[:6])
        meta = json.dumps(model.metadata()) + json.dumps(dataclasses.asdict(model.settings))
        monkeypatch.setenv("KDISTILL_TEST_KEY", "sk-wrong-key")
        with pytest.raises(KdistillError) as refused:
            teacher(proxy.url, tmp_path / "other.jsonl", api_key_env="KDISTILL_TEST_KEY").label_logprobs(TEXTS[:1])
    assert proxy.faults_injected()["echo_key"] == 2 and "***" in caplog.text  # the echoed key was redacted
    assert "KDISTILL_TEST_KEY" in str(refused.value) and "sk-wrong-key" not in str(refused.value)
    for text in (caplog.text, (tmp_path / "j.jsonl").read_text(), meta, str(refused.value)):
        assert secret not in text


def test_chat_api_and_calibration_through_elicit(tmp_path):
    from kdistill.teachers.elicit import calibrate, content_free_bias

    with FakeOpenAI() as server:
        model = teacher(server.url, tmp_path / "j.jsonl", api="chat", top_logprobs=12)
        logprobs_bl, missing_bl = model.label_logprobs(TEXTS[:4])
        bias_l = content_free_bias(model, ["N/A", ""])
    assert server.counts["/v1/chat/completions"] == 6
    assert not missing_bl.any()  # all 12 tokens listed: nothing is estimated
    calibrated = calibrate(torch.log_softmax(logprobs_bl, -1), bias_l)
    assert torch.isfinite(calibrated).all() and torch.allclose(calibrated.exp().sum(-1), torch.ones(4))


def test_server_without_tokenize_matches_verbalizer_text(tmp_path):
    with FakeOpenAI(tokenize=False) as server:
        without = teacher(server.url, tmp_path / "a.jsonl").label_logprobs(TEXTS[:5])[0]
    torch.testing.assert_close(without, expected_scores(TEXTS[:5], 4))


def test_an_unknown_route_is_a_sentence_not_a_retry_loop(tmp_path):
    with FakeOpenAI() as server:
        model = teacher(server.url + "/api", tmp_path / "j.jsonl", max_retries=50, backoff_s=1.0, max_backoff_s=5.0)
        start = time.monotonic()
        with pytest.raises(KdistillError, match="HTTP 404"):
            model.label_logprobs(TEXTS[:1])
    assert time.monotonic() - start < 2


# ------------------------------------------------------------------------------------------------
# the llama-server helper, without a real binary


def test_the_binary_is_looked_for_where_the_ci_script_builds_it(tmp_path, monkeypatch):
    """The script once moved its build to a new folder while find_binary kept the old one, whose native
    binary dies with SIGILL here: the real-server tests then skipped instead of running."""
    from pathlib import Path

    from kdistill.teachers.llama_server import LLAMA_SERVER_VERSION, find_binary

    script = (Path(__file__).parent.parent / ".ci" / "llama_server.sh").read_text()
    assert f"VERSION={LLAMA_SERVER_VERSION}\n" in script and 'PREFIX="$ROOT/$VERSION-portable"' in script
    monkeypatch.delenv("KDISTILL_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path))
    built = tmp_path / "llama-server" / f"{LLAMA_SERVER_VERSION}-portable" / "bin" / "llama-server"
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n")
    assert find_binary() == built


def test_llama_server_reports_a_missing_binary_and_a_server_that_dies(tmp_path, monkeypatch):
    from kdistill.teachers.llama_server import find_binary

    monkeypatch.setenv("KDISTILL_LLAMA_SERVER", str(tmp_path / "nowhere"))
    assert find_binary() is None
    with pytest.raises(KdistillError, match="llama_server.sh"):
        with llama_server(tmp_path / "model.gguf"):
            pass
    dying = tmp_path / "llama-server"
    dying.write_text("#!/bin/sh\necho \"error: failed to load model $2\"\nexit 3\n")
    dying.chmod(0o755)
    with pytest.raises(KdistillError, match=r"exited with code 3(.|\n)*failed to load model .*model.gguf"):
        with llama_server(tmp_path / "model.gguf", binary=dying):
            pass


# ------------------------------------------------------------------------------------------------
# against a real llama-server serving the Gemma-3-270m GGUF


@contextlib.contextmanager
def _running_server(*args, **kwargs):
    """llama_server(...), or a skip when the built binary cannot run on this CPU (SIGILL: it was compiled
    for instructions this machine does not execute), which is a build mismatch, not a kdistill defect."""
    from kdistill.errors import KdistillError

    try:
        server = llama_server(*args, **kwargs)
        url = server.__enter__()
    except KdistillError as err:
        if "exited with code -4" in str(err):
            pytest.skip("llama-server died with SIGILL on this CPU; rebuild it with .ci/llama_server.sh")
        raise
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def gemma_server():
    from kdistill import assets
    from kdistill.teachers.llama_server import find_binary

    if find_binary() is None:
        pytest.skip("no llama-server binary: run .ci/llama_server.sh (CI does) or set KDISTILL_LLAMA_SERVER")
    with _running_server(assets.fetch("gemma-3-270m"), parallel=2) as url:
        yield url


@pytest.fixture(scope="module")
def sentiment_setup():
    from kdistill.config import load_config
    from kdistill.data import prepare_data
    from kdistill.teachers.elicit import few_shot_prefix

    cfg = load_config("sentiment-prompted", {"data.max_examples": 200})
    data = prepare_data(cfg.data, cfg.task)
    prefix = few_shot_prefix(cfg.task, data.labelled, cfg.teacher.few_shot_per_label, cfg.data.split_seed)
    return cfg, prefix, [e.text for e in data.test[:12]]


def gemma_endpoint(cfg, prefix, url, journal, **settings) -> EndpointLabelModel:
    options = dict(base_url=url, top_logprobs=20, max_concurrency=2, timeout_s=30, backoff_s=0.05, max_backoff_s=0.5)
    return EndpointLabelModel(EndpointConfig(**{**options, **settings}), model="gemma-3-270m", labels=cfg.task.labels,
                              verbalizers=[cfg.task.verbalizers[label] for label in cfg.task.labels],
                              prompt_template=cfg.task.prompt_template, prefix=prefix, journal_path=journal)


@pytest.fixture(scope="module")
def in_process_gemma(sentiment_setup):
    """(N, L) label log-probs of the in-process teacher (the GGUF dequantized to fp32)."""
    from kdistill.models import load_label_model

    cfg, prefix, texts = sentiment_setup
    local = load_label_model(cfg.teacher, cfg.task, prefix=prefix)
    return torch.log_softmax(local.predict_logits(texts), -1)


@pytest.mark.slow
def test_real_llama_server_on_f32_weights_reproduces_the_in_process_teacher(sentiment_setup, in_process_gemma,
                                                                            tmp_path):
    """The same weights in f32 on both sides: what is left is the client's own doing, and must be ~0."""
    from kdistill import assets
    from kdistill.teachers.llama_server import F32_SERVER_ARGS, f32_copy, find_binary

    if find_binary() is None:
        pytest.skip("no llama-server binary: run .ci/llama_server.sh (CI does) or set KDISTILL_LLAMA_SERVER")
    cfg, prefix, texts = sentiment_setup
    with _running_server(f32_copy(assets.fetch("gemma-3-270m")), extra_args=F32_SERVER_ARGS) as url:
        remote_logprobs, missing_bl = gemma_endpoint(cfg, prefix, url, tmp_path / "j.jsonl").label_logprobs(texts)
    assert not missing_bl.any()  # both verbalizers are in Gemma's top-20 after this prompt
    remote_p = torch.softmax(remote_logprobs, -1)
    assert (remote_p - in_process_gemma.exp()).abs().max() <= 2e-3
    assert torch.equal(remote_p.argmax(-1), in_process_gemma.argmax(-1))


@pytest.mark.slow
def test_real_llama_server_on_the_q4_gguf_is_close_to_the_in_process_teacher(gemma_server, sentiment_setup,
                                                                             in_process_gemma, tmp_path):
    """llama.cpp multiplies the Q4 weights with 8-bit-quantized activations, so it is close, not equal
    (benchmarks/results/endpoint_agreement.md: mean |Δp| ~0.03, the same order as its run-to-run noise)."""
    cfg, prefix, texts = sentiment_setup
    remote = gemma_endpoint(cfg, prefix, gemma_server, tmp_path / "j.jsonl")
    remote_p = torch.softmax(remote.label_logprobs(texts)[0], -1)
    local_p = in_process_gemma.exp()
    assert (remote_p - local_p).abs().mean() <= 0.06
    decided = local_p.max(-1).values > 0.6  # near 50/50, quantization noise may flip the top label
    assert torch.equal(remote_p.argmax(-1)[decided], local_p.argmax(-1)[decided])


@pytest.mark.slow
def test_real_llama_server_through_faults_loses_nothing(gemma_server, sentiment_setup, tmp_path):
    cfg, prefix, texts = sentiment_setup
    direct = gemma_endpoint(cfg, prefix, gemma_server, tmp_path / "direct.jsonl").label_logprobs(texts)[0]
    faults = ["timeout", "500", "429", "truncated", "not_json", "missing", "reset"]
    # requests 1-3 ask for the model and the verbalizers' tokens; each fault then hits one completion
    plan = lambda n, path: faults[n - 4] if path == "/v1/completions" and 4 <= n < 4 + len(faults) else None
    with FaultProxy(gemma_server.removesuffix("/v1"), plan, stall_s=16.0) as proxy:
        model = gemma_endpoint(cfg, prefix, proxy.url, tmp_path / "faulty.jsonl", timeout_s=15.0)
        faulty = model.label_logprobs(texts)[0]
    assert set(proxy.faults_injected()) == set(faults)
    # llama.cpp's logits depend a little on how a prompt is batched and how much of it its prompt
    # cache held, so a second pass is close, not equal; a mixed-up or lost answer would not be close
    faulty_p, direct_p = torch.softmax(faulty, -1), torch.softmax(direct, -1)
    decided = direct_p.max(-1).values > 0.55
    assert torch.equal(faulty_p.argmax(-1)[decided], direct_p.argmax(-1)[decided])
    assert (faulty_p - direct_p).abs().max() <= 0.05
    records = journal_records(tmp_path / "faulty.jsonl")
    assert len(records) == len(texts) == len({r["key"] for r in records})


# ------------------------------------------------------------------------------------------------
# an endpoint teacher named in a run's config


def test_endpoint_teacher_in_a_run_config_end_to_end(tiny_config, monkeypatch):
    """`teacher.endpoint` makes the server the run's teacher: elicited through the run's teacher cache and
    its journal, timed on real requests, shown on the report card; the key stays out of every file."""
    from kdistill import api
    secret = "sk-run-config-0123456789"
    monkeypatch.setenv("KDISTILL_TEST_KEY", secret)
    with FakeOpenAI(api_key=secret) as server:
        cfg = tiny_config(teacher={"model": "fake-lm", "name": "remote", "endpoint": {
                              "base_url": server.url, "api_key_env": "KDISTILL_TEST_KEY", "top_logprobs": 4,
                              "max_concurrency": 2, "backoff_s": 0.01, "max_backoff_s": 0.05}},
                          evaluation={"seeds": [0], "baselines": False})
        assert "not contacted by validate" in api.validate(cfg)
        run_dir = api.run(cfg, progress=False)
        asked = server.counts["/v1/completions"]
        signal = api.elicit(cfg, progress=False)  # again: every answer comes from the teacher cache
        assert server.counts["/v1/completions"] == asked
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    teacher = results["models"]["teacher"]
    assert teacher["cost"]["parameters"] == 1234  # the server's own account of the model
    assert teacher["cost"]["latency_p50_ms"] > 0 and teacher["cost"]["size_on_disk_bytes"] is None
    examples = len(signal.targets.ids)
    journal = journal_records(run_dir / "teacher_cache" / "endpoint-journals" / "remote.jsonl")
    assert len(journal) == len({r["key"] for r in journal}) >= examples
    # the timing requests are asked afresh and kept nowhere: 1 warm-up + 3 latency at batch 1, then a
    # warm-up batch and 1 timed batch of 4; everything else asked was journaled
    assert asked == len(journal) + 1 + 3 + 4 + 4
    speed = json.loads((run_dir / "teacher_cache" / "last_elicitation-remote.json").read_text())
    assert speed["examples"] == examples and speed["endpoint"]["asked"] > 0
    assert "| teacher" in (run_dir / "report.md").read_text()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes().decode("utf-8", "replace"), path
