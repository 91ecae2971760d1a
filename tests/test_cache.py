"""The teacher cache: resumed equals uninterrupted, any key change misses, damage is detected and repaired,
reads are lazy and by id, storage stays under 150 B per target token at k = 32 on Qwen's vocabulary."""

from __future__ import annotations

import fcntl
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cache_writer_proc as writer
from kdistill.cache import (
    CacheCorruptError,
    TeacherCache,
    TokenRow,
    cache_export,
    cache_info,
    cache_verify,
    elicit_resumable,
    import_openai_top_logprobs,
    key_fields,
    verify_entry,
)
from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets, divergence

LABELS = ["negative", "neutral", "positive"]


def _label_fields(ids, **changes):
    base = dict(kind="labels", teacher="t", weights="w", tokenizer="tok", prompt="Review: {text}", data="d",
                example_ids=ids, labels=LABELS)
    return key_fields(**{**base, **changes})


def _fake_labels(batch):
    """(n, L) label log-probs, a pure function of each id."""
    rows = [torch.randn(len(LABELS), generator=torch.Generator().manual_seed(int(i.split("-")[1]))) for i in batch]
    return torch.stack(rows).log_softmax(-1)


def _token_entry(root, ids=None):
    ids = ids or writer.example_ids()
    entry = TeacherCache(root).entry(writer.fields(ids))
    return elicit_resumable(entry, ids, writer.fake_teacher, shard_size=writer.SHARD_SIZE, progress=False)


def _shard_checksums(entry):
    return [(s["name"], s["data_sha256"], s["index_sha256"]) for s in entry.manifest()["shards"]]


def _assert_same_values(entry, reference):
    assert entry.ids() == reference.ids()
    for example_id in reference.ids():
        got, want = entry.tokens(example_id), reference.tokens(example_id)
        assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.logprobs, want.logprobs)
        assert torch.equal(got.tail_logmass, want.tail_logmass)
        assert entry.generation(example_id) == reference.generation(example_id)


def _flip_byte(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the writer process, and how long its elicitation took."""
    root = tmp_path_factory.mktemp("reference")
    out = subprocess.run([sys.executable, writer.__file__, str(root)], capture_output=True, text=True, check=True)
    seconds = float(out.stdout.split("done ")[1])
    return TeacherCache(root).entry(writer.fields()), seconds


# -- (a) kill -9, resume, identical -----------------------------------------------------------------------


def test_kill9_at_random_points_then_resume_equals_uninterrupted(tmp_path, reference):
    ref_entry, ref_seconds = reference
    rng = random.Random(0)
    partial_at_kill = 0
    for trial in range(10):
        root = tmp_path / f"trial-{trial}"
        proc = subprocess.Popen([sys.executable, writer.__file__, str(root)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, ref_seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        entry = TeacherCache(root).entry(writer.fields())
        partial_at_kill += not entry.complete
        resumed = elicit_resumable(TeacherCache(root).entry(writer.fields()), writer.example_ids(),
                                   writer.fake_teacher, shard_size=writer.SHARD_SIZE, progress=False)
        ok, text = cache_verify(resumed.folder)
        assert ok, f"trial {trial}: {text}"
        assert _shard_checksums(resumed) == _shard_checksums(ref_entry), f"trial {trial}: shards differ"
        assert not list(resumed.folder.rglob("*.tmp")), "a killed writer's temporary file was left behind"
        _assert_same_values(resumed, ref_entry)
    assert partial_at_kill >= 5, f"only {partial_at_kill}/10 kills landed before the manifest; the test is too slow"


def test_resume_computes_only_the_missing_shards(tmp_path):
    ids = [f"ex-{i}" for i in range(50)]
    entry = TeacherCache(tmp_path).entry(_label_fields(ids))
    calls = []

    def crashing(batch):
        if len(calls) == 3:
            raise RuntimeError("teacher died")
        calls.append(batch)
        return _fake_labels(batch)

    with pytest.raises(RuntimeError):
        elicit_resumable(entry, ids, crashing, shard_size=8, progress=False)
    assert not entry.complete and len(entry.missing(ids)) == 50 - 3 * 8
    calls.clear()
    elicit_resumable(entry, list(reversed(ids)), lambda b: calls.append(b) or _fake_labels(b), shard_size=5,
                     progress=False)  # another shard_size: the entry's plan (8) is kept
    assert sorted(i for batch in calls for i in batch) == sorted(ids)[24:]
    assert entry.complete and verify_entry(entry).ok
    torch.testing.assert_close(entry.labels(ids), _fake_labels(ids), rtol=0, atol=0)
    calls.clear()
    elicit_resumable(entry, ids, lambda b: calls.append(b) or _fake_labels(b), shard_size=8, progress=False)
    assert calls == [], "a complete entry was elicited again"


def test_a_second_writer_is_refused(tmp_path):
    ids = [f"ex-{i}" for i in range(4)]
    entry = TeacherCache(tmp_path).entry(_label_fields(ids))
    entry.folder.mkdir(parents=True)
    with open(entry.folder / ".lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(KdistillError, match="another process"):
            elicit_resumable(entry, ids, _fake_labels, shard_size=2, progress=False)


# -- (b) keys and damage -----------------------------------------------------------------------------------


def test_any_key_change_is_a_miss(tmp_path):
    ids = writer.example_ids()[:20]
    base = dict(kind="tokens", teacher="qwen", weights="w1", tokenizer="tok1", prompt="{text}", data="d1",
                example_ids=ids, k=32, temperature=1.0, vocab_size=writer.VOCAB_SIZE)
    cache = TeacherCache(tmp_path)
    elicit_resumable(cache.entry(key_fields(**base)), ids, writer.fake_teacher, shard_size=8, progress=False)
    assert cache.entry(key_fields(**base)).missing(ids) == []
    changes = {"teacher": "llama", "weights": "w2", "tokenizer": "tok2", "prompt": "Q: {text}", "k": 16,
               "temperature": 2.0, "data": "d2", "example_ids": ids[:-1] + ["doc-9999"]}
    folders = {cache.entry(key_fields(**base)).folder}
    for name, value in changes.items():
        entry = cache.entry(key_fields(**{**base, name: value}))
        assert entry.missing(ids) == ids and not entry.complete, f"changing {name} hit the cache"
        folders.add(entry.folder)
    assert len(folders) == len(changes) + 1


def test_key_fields_must_cover_everything():
    fields = _label_fields(["ex-1"])
    del fields["tokenizer"]
    with pytest.raises(KdistillError, match="tokenizer"):
        TeacherCache("/nonexistent").entry(fields)
    with pytest.raises(KdistillError, match="temperature"):
        key_fields(kind="tokens", teacher="t", weights="w", tokenizer="t", prompt="p", data="d", example_ids=["a"],
                   k=4, temperature=0, vocab_size=10)


def test_key_collision_or_foreign_manifest_is_a_miss(tmp_path):
    ids = [f"ex-{i}" for i in range(6)]
    fields = _label_fields(ids)
    cache = TeacherCache(tmp_path)
    entry = cache.entry(fields)
    (entry.folder).mkdir(parents=True)
    (entry.folder / "entry.json").write_text(json.dumps({"key": "f" * 64, "fields": {}}))  # someone else's
    assert cache.entry(fields).folder.name == cache.entry(fields).key  # the full key, not the prefix
    elicit_resumable(cache.entry(fields), ids, _fake_labels, shard_size=4, progress=False)
    mine = cache.entry(fields)
    assert mine.complete
    manifest = json.loads(mine.manifest_path.read_text())
    mine.manifest_path.write_text(json.dumps({**manifest, "key": "e" * 64}))
    assert not cache.entry(fields).complete


def test_flipped_byte_is_detected_on_read_and_its_shard_re_elicited(tmp_path, reference):
    entry = _token_entry(tmp_path)
    victim_id = entry.ids()[17]  # in shard 2
    data_path = entry.shards_dir / "shard-00002.bin"
    _flip_byte(data_path, 100)
    fresh = TeacherCache(tmp_path).entry(writer.fields())
    damaged_ids = [i for i in fresh.ids() if fresh._reader_of(i).data_path == data_path]
    with pytest.raises(CacheCorruptError, match="CRC-32"):
        for example_id in damaged_ids:
            fresh.tokens(example_id)
    ok, text = cache_verify(tmp_path)
    assert not ok and "shard-00002.bin fails its sha256" in text
    assert fresh.missing(fresh.ids()) == damaged_ids and victim_id in damaged_ids
    calls = []
    elicit_resumable(fresh, writer.example_ids(), lambda b: calls.append(b) or writer.fake_teacher(b),
                     shard_size=writer.SHARD_SIZE, progress=False)
    assert calls == [damaged_ids]
    _assert_same_values(TeacherCache(tmp_path).entry(writer.fields()), reference[0])


def test_flipped_byte_in_an_index_is_detected(tmp_path):
    entry = _token_entry(tmp_path, writer.example_ids()[:16])
    index_path = entry.shards_dir / "shard-00001.json"
    text = index_path.read_text()
    index_path.write_text(text.replace('"crc32":[', '"crc32":[1', 1))  # still valid JSON
    fresh = TeacherCache(tmp_path).entry(entry.fields)
    with pytest.raises(CacheCorruptError, match="sha256"):
        fresh.tokens(fresh.ids()[0])
    assert not verify_entry(fresh).ok


def test_truncated_shard_is_detected_and_repaired(tmp_path):
    ids = [f"ex-{i}" for i in range(30)]
    entry = elicit_resumable(TeacherCache(tmp_path).entry(_label_fields(ids)), ids, _fake_labels, shard_size=10,
                             progress=False)
    data_path = entry.shards_dir / "shard-00001.bin"
    data_path.write_bytes(data_path.read_bytes()[:-7])
    fresh = TeacherCache(tmp_path).entry(_label_fields(ids))
    with pytest.raises(CacheCorruptError, match="truncated"):
        fresh.labels(ids)
    report = verify_entry(fresh)
    assert not report.ok and "truncated" in report.text()
    assert len(fresh.missing(ids)) == 10
    elicit_resumable(fresh, ids, _fake_labels, shard_size=10, progress=False)
    assert torch.equal(TeacherCache(tmp_path).entry(_label_fields(ids)).labels(ids), _fake_labels(ids))


@pytest.mark.parametrize("removed", ["shard-00000.bin", "shard-00000.json"])
def test_manifest_pointing_to_a_missing_file_is_detected(tmp_path, removed):
    ids = [f"ex-{i}" for i in range(12)]
    entry = elicit_resumable(TeacherCache(tmp_path).entry(_label_fields(ids)), ids, _fake_labels, shard_size=6,
                             progress=False)
    (entry.shards_dir / removed).unlink()
    fresh = TeacherCache(tmp_path).entry(_label_fields(ids))
    with pytest.raises(CacheCorruptError, match="missing"):
        fresh.labels(ids)
    ok, text = cache_verify(tmp_path)
    assert not ok and "missing" in text
    elicit_resumable(fresh, ids, _fake_labels, shard_size=6, progress=False)
    assert cache_verify(tmp_path)[0]


def test_a_manifest_left_from_before_a_rewrite_is_never_trusted(tmp_path):
    """As after a power cut that lost the manifest's unlink but kept the rewritten shard."""
    ids = [f"ex-{i}" for i in range(8)]
    entry = elicit_resumable(TeacherCache(tmp_path).entry(_label_fields(ids)), ids, _fake_labels, shard_size=4,
                             progress=False)
    old_manifest = entry.manifest_path.read_text()
    entry.write_shard(ids[:4], _fake_labels(ids[:4]) - 1.0, index=0)  # same ids, other values
    entry.manifest_path.write_text(old_manifest)
    fresh = TeacherCache(tmp_path).entry(_label_fields(ids))
    with pytest.raises(CacheCorruptError, match="differs from the one its manifest lists"):
        fresh.labels(ids)
    elicit_resumable(fresh, ids, _fake_labels, shard_size=4, progress=False)
    assert verify_entry(fresh).ok and torch.equal(fresh.labels(ids[:4]), _fake_labels(ids[:4]) - 1.0)


def test_finalize_refuses_gaps_and_duplicates(tmp_path):
    ids = [f"ex-{i}" for i in range(6)]
    entry = TeacherCache(tmp_path).entry(_label_fields(ids))
    entry.write_shard(ids[:3], _fake_labels(ids[:3]))
    with pytest.raises(KdistillError, match="missing or extra"):
        entry.finalize()
    entry.write_shard(ids[2:], _fake_labels(ids[2:]))
    with pytest.raises(KdistillError, match="in both"):
        entry.finalize()
    assert not entry.complete


# -- reads ------------------------------------------------------------------------------------------------


def test_lookup_is_by_id_in_any_order(tmp_path):
    ids = [f"ex-{i}" for i in range(40)]
    entry = elicit_resumable(TeacherCache(tmp_path).entry(_label_fields(ids)), ids, _fake_labels, shard_size=7,
                             progress=False)
    shuffled = random.Random(1).sample(ids, len(ids))
    assert torch.equal(entry.labels(shuffled), _fake_labels(shuffled))
    with pytest.raises(KdistillError, match="not in teacher cache"):
        entry.labels(["ex-999"])


def test_reading_one_example_touches_one_shard(tmp_path):
    entry = _token_entry(tmp_path)
    target_id = entry.ids()[-1]
    fresh = TeacherCache(tmp_path).entry(writer.fields())
    target_shard = fresh._reader_of(target_id).data_path.name
    for other in entry.shards_dir.glob("shard-*.bin"):
        if other.name != target_shard:
            other.unlink()  # a read that looked at any other shard's data would fail
    targets = fresh.tokens(target_id)
    assert fresh.opened_shards() == [Path(target_shard).stem]
    assert torch.equal(targets.token_ids, torch.from_numpy(writer.fake_row(target_id).token_ids))
    assert isinstance(fresh._readers[Path(target_shard).stem]._data, np.memmap)


def test_token_rows_round_trip(tmp_path):
    entry = _token_entry(tmp_path, writer.example_ids()[:40])
    for example_id in entry.ids():
        row, got = writer.fake_row(example_id), entry.tokens(example_id)
        assert got.token_ids.dtype == torch.long and torch.equal(got.token_ids, torch.from_numpy(row.token_ids))
        logprobs_tk = torch.from_numpy(row.logprobs)
        bound_tk = torch.maximum(logprobs_tk.abs() * 2.0**-11, torch.tensor(2.0**-25))  # fp16 half-ulp
        assert ((got.logprobs - logprobs_tk).abs() <= bound_tk).all()
        assert torch.equal(got.tail_logmass, torch.from_numpy(row.tail_logmass))
        assert entry.generation(example_id) == (None if row.generation is None else (row.generation, row.seed))


def test_cached_sparse_targets_give_the_live_divergence(tmp_path):
    """fp16 log-probs move forward KL by well under a percent of itself."""
    vocab, k, num_tokens = 500, 32, 64
    gen = torch.Generator().manual_seed(0)
    teacher_nv, student_nv = torch.randn(num_tokens, vocab, generator=gen) * 3, torch.randn(num_tokens, vocab, generator=gen)
    live = SparseTargets.from_logits(teacher_nv, k)
    fields = key_fields(kind="tokens", teacher="t", weights="w", tokenizer="t", prompt="p", data="d",
                        example_ids=["only"], k=k, temperature=1.0, vocab_size=vocab)
    entry = elicit_resumable(TeacherCache(tmp_path).entry(fields), ["only"],
                             lambda b: [TokenRow(live.token_ids, live.logprobs, live.tail_logmass)], shard_size=1,
                             progress=False)
    cached = entry.tokens("only")
    for temperature in (1.0, 2.0):
        want = divergence(student_nv, live, kind="forward_kl", temperature=temperature)
        got = divergence(student_nv, cached, kind="forward_kl", temperature=temperature)
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4)


def test_storage_is_under_150_bytes_per_target_token_at_k32_on_qwen_vocab(tmp_path):
    """Everything in the entry folder (data, indexes, manifest) over realistic 256-token examples."""
    ids = [f"doc-{i}" for i in range(24)]
    fields = key_fields(kind="tokens", teacher="t", weights="w", tokenizer="t", prompt="p", data="d",
                        example_ids=ids, k=32, temperature=1.0, vocab_size=151_936)

    def rows(batch):
        out = []
        for example_id in batch:
            rng = np.random.default_rng(int(example_id.split("-")[1]))
            ids_tk = np.stack([rng.choice(151_936, 32, replace=False) for _ in range(256)])
            logprobs_tk = np.log(rng.dirichlet(np.ones(33), 256)[:, :32])
            out.append(TokenRow(ids_tk, logprobs_tk, np.log1p(-np.exp(logprobs_tk).sum(1))))
        return out

    entry = elicit_resumable(TeacherCache(tmp_path).entry(fields), ids, rows, shard_size=8, progress=False)
    disk_bytes = sum(p.stat().st_size for p in entry.folder.rglob("*") if p.is_file())
    bytes_per_token = disk_bytes / (24 * 256)
    assert 136 <= bytes_per_token <= 150, bytes_per_token
    assert entry.tokens("doc-5").token_ids.max() < 151_936


# -- tools and the OpenAI converter -------------------------------------------------------------------


def test_info_verify_and_export_round_trip(tmp_path):
    entry = _token_entry(tmp_path / "cache", writer.example_ids()[:16])
    info = cache_info(tmp_path / "cache")
    assert "complete" in info and "examples: 16" in info and entry.key in info
    assert cache_verify(entry.folder) == (True, verify_entry(entry).text())
    out = tmp_path / "export.jsonl"
    assert cache_export(tmp_path / "cache", out) == 16
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids, rows = import_openai_top_logprobs(records, {}, k=writer.TOP_K)
    again = TeacherCache(tmp_path / "again").entry(entry.fields)
    again.write_shard(ids, rows)
    again.finalize()
    _assert_same_values(again, entry)


def test_export_of_label_entries(tmp_path):
    ids = ["ex-1", "ex-2"]
    elicit_resumable(TeacherCache(tmp_path).entry(_label_fields(ids)), ids, _fake_labels, shard_size=2,
                     progress=False)
    out = tmp_path / "labels.jsonl"
    cache_export(tmp_path, out)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["id"] == "ex-1" and list(first["label_logprobs"]) == LABELS
    assert math.isclose(sum(math.exp(v) for v in first["label_logprobs"].values()), 1.0, rel_tol=1e-6)


def test_import_chat_shape():
    vocab = {"Hello": 0, " world": 1, "!": 2, " there": 3, "?": 4}
    record = {"id": "q1", "seed": 7, "logprobs": {"content": [
        {"token": "Hello", "logprob": -0.1, "top_logprobs": [{"token": "Hello", "logprob": -0.1},
                                                            {"token": " there", "logprob": -2.5}]},
        {"token": " world", "logprob": -0.7, "top_logprobs": [{"token": "!", "logprob": -1.9},
                                                             {"token": " world", "logprob": -0.7},
                                                             {"token": "?", "logprob": -3.0}]},
        {"token": "!", "logprob": -0.2, "top_logprobs": [{"token": "token_id:2", "logprob": -0.2}]},
    ]}}
    ids, rows = import_openai_top_logprobs([record], vocab, k=2)
    row = rows[0]
    assert ids == ["q1"] and row.generation == "Hello world!" and row.seed == 7
    assert row.token_ids.tolist() == [[0, 3], [2, 1], [2, 0]]  # the top 2 in the given order; short row padded
    assert row.logprobs[2, 1] == -math.inf
    expected_tail = [1 - math.exp(-0.1) - math.exp(-2.5), 1 - math.exp(-0.7) - math.exp(-1.9),
                     1 - math.exp(-0.2)]  # the third entry (-3.0) beyond k joins the tail
    np.testing.assert_allclose(np.exp(row.tail_logmass), expected_tail, rtol=1e-5)


def test_import_completions_shape_and_errors():
    vocab = {"a": 0, "b": 1, "c": 2}
    record = {"id": 5, "choices": [{"logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.3],
                                                 "top_logprobs": [{"a": -0.1, "b": -2.4}, {"b": -0.3, "c": -1.4}]}}]}
    ids, rows = import_openai_top_logprobs([record], vocab, k=2)
    assert ids == ["5"] and rows[0].token_ids.tolist() == [[0, 1], [1, 2]] and rows[0].generation is None
    over = {"id": "x", "logprobs": {"top_logprobs": [{"a": 0.0, "b": -0.5}]}}  # probabilities sum above 1
    assert import_openai_top_logprobs([over], vocab, k=2)[1][0].tail_logmass[0] == -math.inf
    with pytest.raises(KdistillError, match="not in the teacher's vocabulary"):
        import_openai_top_logprobs([{"id": "y", "logprobs": {"top_logprobs": [{"zz": -0.1}]}}], vocab, k=1)
    with pytest.raises(KdistillError, match="no top_logprobs"):
        import_openai_top_logprobs([{"id": "y", "logprobs": {"top_logprobs": [None]}}], vocab, k=1)


def test_bad_rows_are_refused_with_a_sentence(tmp_path):
    fields = key_fields(kind="tokens", teacher="t", weights="w", tokenizer="t", prompt="p", data="d",
                        example_ids=["a"], k=2, temperature=1.0, vocab_size=10)
    entry = TeacherCache(tmp_path).entry(fields)
    good = dict(logprobs=np.zeros((1, 2)), tail_logmass=np.zeros(1))
    with pytest.raises(KdistillError, match=r"\[0, 10\)"):
        entry.write_shard(["a"], [TokenRow(np.array([[1, 10]]), **good)])
    with pytest.raises(KdistillError, match="distinct"):
        entry.write_shard(["a"], [TokenRow(np.array([[3, 3]]), **good)])
    with pytest.raises(KdistillError, match="seed"):
        entry.write_shard(["a"], [TokenRow(np.array([[1, 2]]), **good, generation="hi")])


def test_vector_rows_round_trip_and_export(tmp_path):
    ids = [f"ex{i}" for i in range(7)]
    fields = key_fields(kind="vectors", teacher="t", weights="w", tokenizer="tok", prompt="p", data="d",
                        example_ids=ids, shape=[2, 3], layers=[4, 8], pool="last")
    entry = TeacherCache(tmp_path).entry(fields)
    values = torch.randn(7, 2, 3)
    elicit_resumable(entry, ids, lambda batch: values[[ids.index(i) for i in batch]].numpy(), shard_size=3,
                     progress=False)
    assert torch.equal(entry.vectors(["ex5", "ex0"]), values[[5, 0]])  # by id, exact float32
    out = tmp_path / "v.jsonl"
    cache_export(entry.folder, out)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["shape"] == [2, 3] and len(first["values"]) == 6
    with pytest.raises(KdistillError, match="shape"):
        key_fields(kind="vectors", teacher="t", weights="w", tokenizer="tok", prompt="p", data="d",
                   example_ids=ids, shape=[0])


def test_several_processes_split_the_shards_and_finish_the_same_entry(tmp_path):
    """Two ranks (threads here, a barrier between them) each compute their own shards; the entry equals
    one written by a single process, and no shard is computed twice."""
    import threading

    from kdistill.cache import TeacherCache
    from kdistill.cache.resumable import elicit_resumable

    ids = [f"ex{i:03d}" for i in range(50)]
    fields = key_fields(kind="labels", teacher="t", weights="w", tokenizer="tok", prompt="p", data="d",
                        example_ids=ids, labels=["a", "b"])
    rows = lambda batch: np.array([[-float(int(i[2:])), -1.0] for i in batch], dtype=np.float32)
    single = elicit_resumable(TeacherCache(tmp_path / "one").entry(fields), ids, rows, shard_size=10, progress=False)
    computed: dict[int, list[str]] = {0: [], 1: []}
    barrier = threading.Barrier(2)
    entry_dir = tmp_path / "two"

    def rank(r: int) -> None:
        def compute(batch):
            computed[r].append(batch[0])
            return rows(batch)
        elicit_resumable(TeacherCache(entry_dir).entry(fields), ids, compute, shard_size=10, progress=False,
                         rank=r, world_size=2, barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert computed == {0: ["ex000", "ex020", "ex040"], 1: ["ex010", "ex030"]}
    together = TeacherCache(entry_dir).entry(fields)
    assert together.manifest() is not None and verify_entry(together).ok
    np.testing.assert_array_equal(together.labels(ids), single.labels(ids))
