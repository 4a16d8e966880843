"""Neural first stages: a query's vector against a faiss index of passage vectors (dense), and a query's learned
sparse weights against an impact index, scored by the BM25 kernels in linear mode (SPLADE)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from engine.encoders import BiEncoder, SpladeEncoder
from engine.errors import SiftError
from engine.format import IndexFormatError, PostingLists, parse_meta, verify_files
from engine.reader import IndexReader, Results, rank_documents
from engine.sparse import ALGORITHMS, KERNEL_CODES, NO_MASK, exhaustive_scratch, search_segment


class NeuralSearchError(SiftError):
    pass


def _choose_model(index: IndexReader, kind: str, model: str | None, build_flag: str) -> tuple[str, dict]:
    """The manifest entry of kind's index of model (the first one if model is None), or an error saying what to do."""
    built = index.manifest.get(kind, {})
    if not built:
        raise NeuralSearchError(f"{index.path}: no {kind} index; build one with: sift index ... {build_flag}")
    if model is None:
        model = next(iter(built))
    if model not in built:
        raise NeuralSearchError(f"{index.path}: no {kind} index for {model!r}; it has: {', '.join(built)}")
    return model, built[model]


class DenseSearcher:
    """One model's dense index inside a Sift index, a faiss index per segment; scores are inner products (cosine for
    unit vectors). Each segment's top k of its live (and matching) passages are merged exactly, as the BM25
    segments' are, so results do not depend on how the index is segmented."""

    def __init__(self, index: IndexReader, model: str | None = None, threads: int | None = None) -> None:
        import faiss

        model, entry = _choose_model(index, "dense", model, "--dense")
        self.index = index
        self.model = model
        self.faiss = []
        for folder in _segment_folders(index, entry):
            try:
                meta = parse_meta(folder / "dense.json", (folder / "dense.json").read_bytes())
            except OSError as e:
                raise IndexFormatError(f"{folder / 'dense.json'}: missing or damaged ({e})") from None
            verify_files(folder, meta.get("files"))
            flags = faiss.IO_FLAG_MMAP if meta["faiss"] == "flat" else 0
            self.faiss.append(faiss.read_index(str(folder / "faiss.index"), flags))
        self.encoder = BiEncoder(model, threads=threads)

    def search_many(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        """Top-k passages per query (documents: a split document counts by its best passage); with a filter, the
        top k of the matching passages (faiss searches only the ids a selector admits)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = np.ascontiguousarray(self.encoder.encode(list(queries), query=True))
        masks = self.index.filter_masks(filter)
        searched = [(i, _search_options(index, mask)) for i, (index, mask) in enumerate(zip(self.faiss, masks))
                    if mask is None or mask.any()]  # fmt: skip
        total = sum(int(masks[i].sum()) if masks[i] is not None else self.faiss[i].ntotal for i, _ in searched)
        if not total:
            return [Results([], [], np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]

        def top(rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
            found = []
            for i, options in searched:
                scores, passages = self.faiss[i].search(vectors[rows], depth, **options)
                found.append((scores, passages + self.index.bases[i], passages >= 0))
            return [self.index.merge_tops([p[row][ok[row]] for _, p, ok in found],
                                          [s[row][ok[row]] for s, _, ok in found], depth) for row in range(len(rows))]

        return rank_documents(self.index, top, len(vectors), k, total)

    def search(self, query: str, k: int = 10, filter: str | None = None) -> Results:
        return self.search_many([query], k, filter)[0]


def _search_options(index, mask: np.ndarray | None) -> dict:
    """faiss search arguments admitting only the passages a mask holds (none for no mask)."""
    import faiss

    if mask is None:
        return {}
    bits = np.packbits(mask, bitorder="little")
    kind = type(faiss.downcast_index(index)).__name__
    parameters = (faiss.SearchParametersHNSW if "HNSW" in kind else faiss.SearchParametersIVF
                  if "IVF" in kind else faiss.SearchParameters)()  # fmt: skip
    parameters.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    parameters.bits = bits  # the selector points into this array: it must live as long as the parameters
    return {"params": parameters}


def _segment_folders(index: IndexReader, entry: dict) -> list:
    """A model's folder for each segment of the reader's commit."""
    try:
        return [index.path / entry["segments"][segment.directory.name] for segment in index.segments]
    except KeyError as e:
        raise IndexFormatError(f"{index.path}: no neural folder for segment {e}; the index is damaged") from None


class ImpactSearcher:
    """One learned sparse model's impact index inside a Sift index, an inverted index per segment. A passage's
    score is the sum over the query's terms of the query weight times the passage's impact, divided by the
    quantization scale: the model's dot product, up to the quantization of passage weights. Exact: MaxScore and the
    exhaustive kernel agree, and segments merge as BM25's do."""

    def __init__(self, index: IndexReader, model: str | None = None, threads: int | None = None) -> None:
        model, entry = _choose_model(index, "impact", model, "--splade")
        self.index = index
        self.model = model
        self.lists = [PostingLists(folder) for folder in _segment_folders(index, entry)]
        self.scale = float(entry["scale"])
        self.encoder = SpladeEncoder(model, threads=threads)
        self._no_norms = [np.zeros(segment.passages, dtype=np.uint8) for segment in index.segments]
        self._local = threading.local()

    def search_weights(
        self, weights: dict[str, float], k: int = 10, algorithm: str = "auto", masks: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k global passage numbers and float32 scores for a query already encoded; masks: per segment, the
        passages that may be returned (default: the live ones)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        masks = self.index.live if masks is None else masks
        tokens = list(weights)
        values = (np.array([weights[t] for t in tokens], dtype=np.float64) / self.scale).astype(np.float32)
        found_passages, found_scores = [], []
        no_norms = (np.ones(1, dtype=np.float32), np.zeros(1, dtype=np.int64))
        for i, lists in enumerate(self.lists):
            if masks[i] is not None and not masks[i].any():
                continue
            passages, scores = search_segment(
                lists.postings, lists.offsets, lists.block_arrays, lists.terms.find_many(tokens), values,
                (self._no_norms[i], *no_norms), k, KERNEL_CODES[algorithm], self._scratch(i), True,
                NO_MASK if masks[i] is None else masks[i], self.index.tie_keys[i],
            )  # fmt: skip
            if not len(passages):
                continue
            found_passages.append(passages + self.index.bases[i])
            found_scores.append(scores)
        return self.index.merge_tops(found_passages, found_scores, k)

    def _scratch(self, segment: int) -> tuple[np.ndarray, np.ndarray]:
        buffers = self._local.__dict__.setdefault("buffers", {})
        if segment not in buffers:
            buffers[segment] = exhaustive_scratch(self.index.segments[segment].passages)
        return buffers[segment]

    def search_many(self, queries: Sequence[str], k: int = 10, algorithm: str = "auto",
                    filter: str | None = None) -> list[Results]:  # fmt: skip
        """Top-k passages per query (documents: a split document counts by its best passage); with a filter, the
        top k of the matching passages."""
        encoded = self.encoder.encode(list(queries))
        masks = self.index.filter_masks(filter)

        def top(rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
            return [self.search_weights(encoded[row], depth, algorithm, masks) for row in rows.tolist()]

        return rank_documents(self.index, top, len(encoded), k, self.index.passages)

    def search(self, query: str, k: int = 10, filter: str | None = None) -> Results:
        return self.search_many([query], k, filter=filter)[0]
