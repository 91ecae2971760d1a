"""A loopback stand-in for llama.cpp's llama-server (and vLLM's echo scoring) backed by a real tiny causal LM.

It answers the routes the served teacher uses, computing every log-probability with the in-process model, so a
served elicitation can be compared with the in-process one exactly: GET /props, /health, /v1/models; POST
/tokenize, /completion (token-id prompts, n_predict, n_probs, greedy, llama.cpp's reply layout) and
/v1/completions (with `echo` + `logprobs`: vLLM's prompt log-probabilities, as vLLM lays them out).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import torch

from fault_proxy import _Handler, _Server


class FakeLlama(_Server):
    def __init__(self, model_dir, *, llama_cpp: bool = True, tokenize_offset: int = 0) -> None:
        """``llama_cpp``: answer /props and /completion (else only the OpenAI routes, like vLLM);
        ``tokenize_offset``: /tokenize shifts every id by this much (a server with another vocabulary)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.llama_cpp, self.tokenize_offset = llama_cpp, tokenize_offset
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(_FakeLlamaHandler)

    @torch.no_grad()
    def next_logprobs(self, ids: list[int]) -> torch.Tensor:
        """(V,) log-probabilities of the token after ``ids``."""
        with self.lock:  # one forward at a time: the model is shared by the handler threads
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        return torch.log_softmax(logits, -1)

    def top(self, logprobs_v: torch.Tensor, k: int) -> list[dict[str, Any]]:
        values, ids = logprobs_v.topk(min(k, logprobs_v.numel()))
        return [{"id": int(i), "token": self.tokenizer.convert_ids_to_tokens(int(i)), "logprob": float(v)}
                for v, i in zip(values, ids)]

    def completion(self, request: dict[str, Any]) -> dict[str, Any]:
        ids, k = list(request["prompt"]), int(request.get("n_probs", 0))
        out, probs, stop = [], [], "limit"
        for _ in range(int(request["n_predict"])):
            logprobs_v = self.next_logprobs(ids + out)
            token = int(logprobs_v.argmax())
            probs.append({"id": token, "token": self.tokenizer.convert_ids_to_tokens(token),
                          "logprob": float(logprobs_v[token]), "top_logprobs": self.top(logprobs_v, k)})
            if token == self.tokenizer.eos_token_id:
                stop = "eos"
                break
            out.append(token)
        return {"content": self.tokenizer.decode(out), "tokens": out, "stop_type": stop,
                "completion_probabilities": probs if k else [], "tokens_evaluated": len(ids)}

    def echo(self, request: dict[str, Any]) -> dict[str, Any]:
        """vLLM's /v1/completions with echo: the prompt's tokens and, per position after the first, a dict
        {token text: logprob} of the top-k plus the actual token (so k or k + 1 entries), the first None."""
        ids, k = list(request["prompt"]), int(request["logprobs"])
        tokens = [f"token_id:{i}" for i in ids]  # vLLM --return-tokens-as-token-ids
        tops: list[Any] = [None]
        for j in range(1, len(ids)):
            logprobs_v = self.next_logprobs(ids[:j])
            top = {f"token_id:{e['id']}": e["logprob"] for e in self.top(logprobs_v, k)}
            top[f"token_id:{ids[j]}"] = float(logprobs_v[ids[j]])
            tops.append(top)
        return {"id": "cmpl-1", "object": "text_completion", "model": request["model"],
                "choices": [{"index": 0, "text": "", "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "token_logprobs": [None] * len(ids),
                                          "top_logprobs": tops, "text_offset": [0] * len(ids)}}]}


class _FakeLlamaHandler(_Handler):
    def do_GET(self) -> None:
        server: FakeLlama = self.owner
        if self.path == "/v1/models":
            meta = {"n_vocab": len(server.tokenizer), "n_params": 1}
            return self._send(200, json.dumps({"data": [{"id": "fake.gguf", "owned_by": "tests", "meta": meta}]}).encode())
        if self.path == "/props" and server.llama_cpp:
            return self._send(200, json.dumps({"default_generation_settings": {}}).encode())
        if self.path == "/health":
            return self._send(200, b'{"status": "ok"}')
        self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        server: FakeLlama = self.owner
        request = json.loads(self._body())
        with server.lock:
            server.counts[self.path] += 1
        if self.path == "/tokenize":  # llama.cpp: {content, add_special}; vLLM: {model, prompt, add_special_tokens}
            field, special = ("content", "add_special") if server.llama_cpp else ("prompt", "add_special_tokens")
            if field not in request:  # as vLLM's request validation answers
                return self._send(400, json.dumps({"error": {"message": f"body.{field}: Field required"}}).encode())
            ids = server.tokenizer(request[field], add_special_tokens=bool(request.get(special, True)))["input_ids"]
            return self._send(200, json.dumps({"tokens": [i + server.tokenize_offset for i in ids]}).encode())
        if self.path == "/completion" and server.llama_cpp:
            return self._send(200, json.dumps(server.completion(request)).encode())
        if self.path == "/v1/completions" and request.get("echo"):
            return self._send(200, json.dumps(server.echo(request)).encode())
        if self.path == "/v1/completions":
            reply = server.completion({"prompt": request["prompt"], "n_predict": request["max_tokens"]})
            return self._send(200, json.dumps({"choices": [{"text": reply["content"]}]}).encode())
        self._send(404, b'{"error": "not found"}')
