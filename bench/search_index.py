"""Local search index: build rate (documents/s) and query latency, on generated documents.

Writes N Markdown files to a temp folder (words drawn from a Zipf-distributed vocabulary, so
posting lists look like real text), indexes them with ``LocalIndex.add`` (what
``gemma-local index add`` runs), re-runs it (incremental: nothing changed), then times
natural-language queries against the index.

    .venv/bin/python bench/search_index.py [--docs 10000] [--words 120] [--queries 200] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from gemma_local.search.providers.local_index import LocalIndex

QUESTION_FORMS = ["what is {} and {}?", "how does {} relate to {}", "{} {}", "tell me about the {} of {}"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(1, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def generate(root: Path, n_docs: int, n_words: int, rng: random.Random, vocab: list[str], cum: list[float]) -> int:
    total = 0
    for i in range(n_docs):
        length = max(5, int(rng.gauss(n_words, n_words / 3)))
        words = rng.choices(vocab, cum_weights=cum, k=length)
        paragraphs = [" ".join(words[j : j + 40]) + "." for j in range(0, length, 40)]
        folder = root / f"folder{i // 500:03d}"
        folder.mkdir(exist_ok=True)
        text = f"# Document {i} {words[0]}\n\n" + "\n\n".join(paragraphs) + "\n"
        (folder / f"doc{i:06d}.md").write_text(text, encoding="utf-8")
        total += len(text.encode())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--words", type=int, default=120, help="Mean words per document.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="Print one JSON object only.")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    vocab = vocabulary(20_000, rng)
    cum = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))  # Zipf, s = 1

    with tempfile.TemporaryDirectory(prefix="gemma-search-bench-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        t0 = time.perf_counter()
        corpus_bytes = generate(corpus, args.docs, args.words, rng, vocab, cum)
        generate_s = time.perf_counter() - t0

        index = LocalIndex(Path(tmp) / "search.db")
        t0 = time.perf_counter()
        [report] = index.add([corpus])
        build_s = time.perf_counter() - t0
        assert report.added == args.docs, report

        t0 = time.perf_counter()
        [again] = index.add([corpus])
        rescan_s = time.perf_counter() - t0
        assert again.unchanged == args.docs, again

        # Queries mix frequent and rare words, wrapped in question words (stopwords).
        queries = []
        for _ in range(args.queries):
            a, b = rng.choices(vocab, cum_weights=cum, k=1)[0], rng.choice(vocab[:5000])
            queries.append(rng.choice(QUESTION_FORMS).format(a, b))
        for q in queries[:10]:  # warm the page cache
            index.search(q, limit=5)
        latencies, hits = [], 0
        for q in queries:
            t0 = time.perf_counter()
            results = index.search(q, limit=5)
            latencies.append(time.perf_counter() - t0)
            hits += bool(results)
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("search.db*"))

    latencies.sort()
    result = {
        "benchmark": "search_index",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": __import__("sqlite3").sqlite_version,
        },
        "documents": args.docs,
        "mean_words_per_document": args.words,
        "corpus_mb": round(corpus_bytes / 1e6, 1),
        "index_mb": round(db_bytes / 1e6, 1),
        "generate_s": round(generate_s, 2),
        "build_s": round(build_s, 2),
        "build_docs_per_s": round(args.docs / build_s, 1),
        "rescan_unchanged_s": round(rescan_s, 2),
        "rescan_docs_per_s": round(args.docs / rescan_s, 1),
        "queries": len(queries),
        "queries_with_results": hits,
        "query_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "query_ms_p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
        "query_ms_max": round(latencies[-1] * 1000, 2),
    }
    if not args.json:
        print(
            f"{args.docs:,} documents ({result['corpus_mb']} MB of Markdown) -> index {result['index_mb']} MB\n"
            f"build:   {result['build_s']} s = {result['build_docs_per_s']:,} documents/s\n"
            f"rescan:  {result['rescan_unchanged_s']} s = {result['rescan_docs_per_s']:,} documents/s (unchanged)\n"
            f"query:   p50 {result['query_ms_p50']} ms, p95 {result['query_ms_p95']} ms, "
            f"max {result['query_ms_max']} ms over {len(queries)} queries ({hits} with results)"
        )
    print(json.dumps(result, indent=None if not args.json else 2))


if __name__ == "__main__":
    main()
