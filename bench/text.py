"""The text tower measured: model-only (ORT on the served session settings) against the service.

Two loads, as the text issue states them:
- one short query (<= 12 tokens) at a time: p50 over gRPC against p50 of the text graph's
  `session.run` on the same ids (+ 1 ms allowed for the RPC);
- 64 texts of 5-40 tokens from 4 callers at once: texts/s against the graph alone at the batch
  size the server formed (read from its own embedder_batch_size metric), on batches drawn from
  the same texts and padded to the longest, as the server pads them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedder.repository import ModelEntry
from embedder.runtime import open_session, run_text
from embedder.text import TextTokenizer
from tests.support.processes import ServerProcess

from .service import run_load

SHORT_QUERY = "a dog running on a beach at sunset"
WORDS = [
    "a",
    "the",
    "dog",
    "cat",
    "car",
    "street",
    "night",
    "beach",
    "city",
    "person",
    "people",
    "running",
    "walking",
    "red",
    "blue",
    "green",
    "old",
    "young",
    "small",
    "large",
    "two",
    "three",
    "on",
    "in",
    "at",
    "with",
    "near",
    "under",
    "over",
    "snow",
    "rain",
    "sun",
    "light",
    "dark",
    "woman",
    "man",
    "child",
    "bike",
    "train",
    "boat",
    "house",
    "tree",
    "river",
    "mountain",
    "field",
    "road",
    "sign",
    "table",
    "chair",
    "window",
    "kitchen",
    "food",
    "plate",
    "cup",
    "phone",
    "screen",
]
CALLERS, PER_REQUEST = 4, 16


def text_set(tokenizer: TextTokenizer, count: int = 64, seed: int = 5) -> list[str]:
    """`count` captions of 5-40 tokens (start and end tokens included), drawn with a fixed seed."""
    rng, texts = random.Random(seed), []
    while len(texts) < count:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 38)))
        if 5 <= len(tokenizer.encode([text])[0]) <= 40:
            texts.append(text)
    return texts


def p50_ms(step: Any, calls: int) -> float:
    step()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return float(np.percentile(np.array(times) * 1000, 50))


def model_rate(session: Any, tokenizer: TextTokenizer, texts: list[str], batch: int, seconds: float) -> float:
    """texts/s of the graph alone on random batches of `batch` of `texts`, tokenized beforehand."""
    rng, rows = random.Random(batch), tokenizer.encode(texts)
    batches = [tokenizer.feeds(rng.sample(rows, batch)) for _ in range(16)]
    run_text(session, batches[0])
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        run_text(session, batches[done % len(batches)])
        done += 1
    return done * batch / elapsed


def bench_text(entry: ModelEntry, server: ServerProcess, scratch: Path, seconds: float) -> dict[str, object]:
    spec = entry.spec.text
    assert spec is not None
    tokenizer = TextTokenizer.load(entry.directory / spec.tokenizer_file, spec)
    session = open_session(entry.directory / spec.onnx_file, len(__import__("os").sched_getaffinity(0)))
    query = tokenizer.encode([SHORT_QUERY])
    calls = 50 if seconds < 5 else 300
    short_model = p50_ms(lambda: run_text(session, tokenizer.feeds(query)), calls)
    (scratch / "query.txt").write_text(SHORT_QUERY + "\n", encoding="utf-8")
    texts = text_set(tokenizer)
    (scratch / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")

    def served(file: str, callers: int, per_request: int) -> dict[str, object]:
        return run_load(
            server.address,
            entry.name,
            scratch / file,
            callers,
            per_request,
            seconds * 1.5,
            warmup=min(2.0, seconds / 2),
            texts=True,
        )

    short = served("query.txt", 1, 1)
    before = (_batches(server, entry.name), _texts(server, entry.name))
    load = served("texts.txt", CALLERS, PER_REQUEST)
    batches, count = _batches(server, entry.name) - before[0], _texts(server, entry.name) - before[1]
    mean_batch = max(1, round(count / batches)) if batches else PER_REQUEST
    model = model_rate(session, tokenizer, texts, mean_batch, seconds)
    return {
        "short_query_tokens": len(query[0]),
        "short_query_model_p50_ms": short_model,
        "short_query_service_p50_ms": short["p50_ms"],
        "texts": len(texts),
        "tokens_min_max": [
            int(min(len(r) for r in tokenizer.encode(texts))),
            int(max(len(r) for r in tokenizer.encode(texts))),
        ],
        "service_c4_texts_per_s": load["images_per_s"],
        "service_mean_batch": count / batches if batches else None,
        "model_texts_per_s_at_that_batch": model,
        "model_batch": mean_batch,
    }


def _batches(server: ServerProcess, model: str) -> float:
    return server.metric("embedder_batch_size_count", model=model, modality="text")


def _texts(server: ServerProcess, model: str) -> float:
    return server.metric("embedder_batch_size_sum", model=model, modality="text")
