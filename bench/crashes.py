"""Crash safety of the live index: SIGKILLs at random moments and at every failpoint, on a SciFact-sized index.

    python3 -m bench.crashes --trials 300

Each trial starts a writer process on the index the trials before it left; it upserts (new and changed text),
deletes, commits after every change and now and then compacts, writing to a journal, before each commit, the
generation it is about to publish and a digest of the documents it will hold. The trial kills it (at a random
moment, or the writer kills itself at a named failpoint), then opens the index and checks:

- `check_index` (every file's size and CRC32) and a search succeed: 0 corrupt indexes;
- the index's generation is the last one published, and its documents (ids and text) equal the digest recorded for
  that generation: 0 lost committed documents, the index equal to the last commit;
- every 25th trial, BM25 over the index equals a fresh build of its documents (statistics and top 100 of 20 queries).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import DATA, ROOT, WORK, publish
from engine.format import check_index, read_manifest
from engine.index import open_index
from indexers.corpus import CorpusReader, Document, open_source
from indexers.writer import IndexWriter, MergePolicy, build_index

FAILPOINTS = ["after-add", "merge", "before-commit", "before-manifest-rename", "after-commit"]
QUERIES = ["cell biology protein", "vitamin d deficiency", "cancer risk", "gene expression in mice", "covid",
           "blood pressure treatment", "neural network", "dna repair mechanism", "obesity", "antibiotic resistance"]


def _documents(index_dir: Path) -> dict[str, tuple[str, str]]:
    """The live documents of the last commit: id -> (title, text) of their first passage (what the digest covers)."""
    index = open_index(index_dir)
    found = {}
    for segment, live in zip(index.segments, index.live):
        for number in range(segment.passages):
            if live is None or live[number]:
                doc_id, part, title, text = segment.store.fields(number, "id", "part", "title", "text")
                if part == 0:
                    found[doc_id] = (title, text)
    return found


def digest(documents: dict[str, tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for doc_id in sorted(documents):
        title, text = documents[doc_id]
        h.update(b"\0".join([doc_id.encode(), title.encode(), text.encode()]) + b"\1")
    return h.hexdigest()


def worker(index_dir: Path, seed: int, journal: Path) -> None:
    """Changes the index until killed; before each commit, journals the generation and the digest it publishes."""
    rng = random.Random(seed)
    documents = _documents(index_dir)
    vocabulary = " ".join(text for _, text in list(documents.values())[:200]).split()
    policy = MergePolicy(segments_per_tier=4, floor_passages=200)  # merges often, as a long-lived index does
    with open(journal, "a", encoding="utf-8") as log, IndexWriter(index_dir, merge_policy=policy) as writer:
        while True:
            ids = list(documents)
            action = rng.random()
            if action < 0.45 or len(ids) < 100:
                changed = [rng.choice(ids) if rng.random() < 0.5 else f"new-{seed}-{rng.randrange(10**9)}"
                           for _ in range(rng.randint(1, 60))]  # fmt: skip
                batch = {i: ("", " ".join(rng.choices(vocabulary, k=rng.randint(5, 120)))) for i in changed}
                writer.add(Document(i, text, title) for i, (title, text) in batch.items())
                documents.update(batch)
            elif action < 0.9:
                gone = rng.sample(ids, min(len(ids), rng.randint(1, 30)))
                writer.delete(gone)
                for doc_id in gone:
                    documents.pop(doc_id)
            else:
                writer.compact(rng.randint(1, 3))
            log.write(json.dumps({"generation": writer.base["generation"] + 1, "digest": digest(documents)}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            writer.commit()


def _consistent(index_dir: Path, journal: Path, start: dict, work: Path, compare: bool) -> str | None:
    """What is wrong with the index after a kill (None: nothing)."""
    try:
        check_index(index_dir)
        generation = read_manifest(index_dir)["generation"]
        for query in QUERIES[:3]:
            open_index(index_dir).search(query, 10)
        found = digest(_documents(index_dir))
    except Exception as e:  # any failure to open or search is what this counts
        return f"unreadable: {e}"
    lines = journal.read_text().splitlines() if journal.exists() else []  # killed before it opened its journal
    published = [start] + [json.loads(line) for line in lines if line.endswith("}")]
    expected = {entry["generation"]: entry["digest"] for entry in published}
    if generation not in expected or generation < published[-1]["generation"] - 1:
        return f"generation {generation} was never published last (journal: {published[-1]['generation']})"
    if expected[generation] != found:
        return f"generation {generation}: documents differ from what was committed"
    if compare:
        documents = _documents(index_dir)
        fresh_dir = work / "fresh"
        shutil.rmtree(fresh_dir, ignore_errors=True)
        build_index((Document(i, text, title) for i, (title, text) in documents.items()), fresh_dir)
        live, fresh = open_index(index_dir), open_index(fresh_dir)
        if (live.documents, live.avgdl, live.scored_passages) != (fresh.documents, fresh.avgdl, fresh.scored_passages):
            return "statistics differ from a fresh build"
        for query in QUERIES:
            a, b = live.search(query, 100), fresh.search(query, 100)
            if a.scores.tolist() != b.scores.tolist():
                return f"scores for {query!r} differ from a fresh build"
    return None


def run(trials: int, seed: int = 0) -> dict:
    work = WORK / "crashes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = DATA / "scifact" / "corpus.jsonl.gz"
    index_dir = work / "index"
    build_index(CorpusReader(open_source(corpus)), index_dir)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    counts = {"trials": 0, "killed_at_random": 0, "killed_at_failpoint": 0, "finished_before_kill": 0,
              "fresh_build_comparisons": 0, "corrupt": 0, "lost_or_wrong": 0, "commits_published": 0}  # fmt: skip
    failures = []
    started = time.time()
    for trial in range(trials):
        failpoint = FAILPOINTS[(trial // 5) % len(FAILPOINTS)] if trial % 5 == 0 else None
        journal = work / f"journal-{trial}.jsonl"
        start = {"generation": read_manifest(index_dir)["generation"], "digest": digest(_documents(index_dir))}
        command = [sys.executable, "-m", "bench.crashes", "--worker", str(index_dir),
                   "--seed", str(seed * 100_000 + trial), "--journal", str(journal)]  # fmt: skip
        launched = time.time()
        process = subprocess.Popen(command, env={**env, "SIFT_FAILPOINT": failpoint or ""}, cwd=ROOT,
                                   stderr=subprocess.PIPE)  # fmt: skip
        try:
            process.wait(timeout=60 if failpoint else rng.uniform(1.0, 8.0))  # a merge failpoint waits for a merge
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        code = process.returncode
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if code == -signal.SIGKILL:
            counts["killed_at_failpoint" if failpoint and time.time() - launched < 60 else "killed_at_random"] += 1
        else:
            counts["finished_before_kill"] += 1
            failures.append(f"trial {trial}: the writer exited {code}: {stderr.strip().splitlines()[-1:]}")
        counts["trials"] += 1
        counts["commits_published"] = read_manifest(index_dir)["generation"] - 1
        compare = trial % 25 == 24
        counts["fresh_build_comparisons"] += compare
        problem = _consistent(index_dir, journal, start, work, compare)
        if problem:
            counts["corrupt" if problem.startswith("unreadable") else "lost_or_wrong"] += 1
            failures.append(f"trial {trial} ({failpoint or 'random'}): {problem}")
        print(f"trial {trial + 1}/{trials}: {failpoint or 'random'} -> {problem or 'consistent'}", flush=True)
    index = open_index(index_dir)
    return {**counts, "failures": failures, "seconds": round(time.time() - started),
            "final": {"documents": index.documents, "segments": len(index.segments),
                      "deleted_passages": index.deleted_passages}}  # fmt: skip


def render(report: dict) -> str:
    rows = [key for key in report if isinstance(report[key], int) and key != "seconds"]
    return "\n".join([
        "# Crash safety: SIGKILLs during live changes (SciFact, 5,183 documents)",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}. Each trial kills a writer that upserts, deletes, "
        "commits after every change and now and then compacts (merge policy with small tiers), at a random moment "
        "(1-8 s after it starts) or, every fifth trial, at one of its failpoints; then `check_index`, a search, and "
        "the index's documents against the digest journaled for its generation. Every 25th trial also compares "
        "BM25 with a fresh build of the index's documents.",
        "",
        "| count | value |",
        "|---|---|",
        *[f"| {key.replace('_', ' ')} | {report[key]:,} |" for key in rows],
        "",
        f"Failures: {len(report['failures'])}" + "".join(f"\n- {f}" for f in report["failures"]),
        f"Final index: {report['final']}; {report['seconds']:,} s.",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--journal", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seed, args.journal)
        return
    publish("crashes", run(args.trials, args.seed), render)


if __name__ == "__main__":
    main()
