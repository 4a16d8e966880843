"""`sift serve`: a local search service over one index directory (FastAPI on uvicorn).

Safe by default: loopback only unless an API key is set; writes need `Authorization: Bearer KEY` and go through one
IndexWriter; without a key the service is read-only. Searches run on a thread pool (the kernels release the GIL)
while writes proceed; after each commit the reader is refreshed. /search answers exactly as `sift search --json`
(sift/answers.py). SIGTERM: in-flight requests finish, staged writes commit, the writer closes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import SiftError
from engine.format import IndexLockedError, read_manifest
from engine.index import open_index
from engine.reader import ADAPTIVE_CANDIDATES, DocumentNotFoundError
from engine.sharded import ShardUnavailableError, is_sharded
from indexers.corpus import CorpusError, CorpusSource, record_document
from sift.answers import SearchRequest, answer

STATIC = Path(__file__).parent / "static"
PIPELINE_PATTERN = r"^[A-Za-z0-9_().,=+|%>\- ]*$"


@dataclass(frozen=True)
class Limits:
    """What one request may ask; beyond it the answer is a 4xx saying which limit."""

    body_bytes: int = 16 * 2**20
    batch_queries: int = 100
    batch_documents: int = 10_000
    depth: int = 1000  # k + offset
    query_chars: int = 2000
    pipeline_chars: int = 200
    pipeline_stages: int = 6


# --- the API's shapes (the OpenAPI document is generated from them) ---------------------------------------------------


class Hit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    doc_id: str
    score: float
    rank: int
    fields: dict | None = None
    title: str | None = None
    text: str | None = None
    snippet: str | None = None


class SearchAnswer(BaseModel):
    query: str
    k: int | Literal["auto"]
    k_chosen: int | None = None
    corrected: str | None = None
    offset: int
    syntax: str
    took_ms: float
    stages_ms: dict[str, float]
    results: list[Hit]


class SearchQuery(BaseModel):
    """GET /search's parameters (one model: FastAPI validates it at once, several times faster than one by one)."""

    q: str = Field(..., min_length=1, description="the query")
    k: str = Field("10", pattern=r"^(auto|[1-9][0-9]{0,4})$", description='results, or "auto" (Adaptive-k)')
    offset: int = Field(0, ge=0, le=100_000, description="skip this many: the next page")
    pipeline: str = Field("bm25", pattern=PIPELINE_PATTERN, description="bm25, dense, hybrid, ... (see /stats)")
    filter: str | None = Field(None, description="e.g. year >= 2019 AND journal IN [Nature, Science]")
    documents: bool = Field(False, description="rank documents by their best passage")
    syntax: Literal["plain", "lucene"] = "plain"
    fields: str | None = Field(None, description="e.g. title^2,text")
    typos: Literal["off", "auto"] = "off"
    text: bool = Field(False, description="each hit's stored title and text, and its snippet")
    snippets: bool = Field(False, description="each hit's best fragment, query words marked <mark>")
    fragment_length: int = Field(200, ge=1, le=10_000)


class SearchBody(BaseModel):
    """POST /search: one query (q) or a batch (queries), with the options of GET /search."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"oneOf": [{"required": ["q"]},
                                                                          {"required": ["queries"]}]})  # fmt: skip
    q: str = Field(None, min_length=1)  # one of q and queries (None: not given; null is not a query)
    queries: list[Annotated[str, Field(min_length=1)]] = Field(None, min_length=1)
    k: int | Literal["auto"] = Field(10)
    offset: int = Field(0, ge=0)
    pipeline: str = Field("bm25", pattern=PIPELINE_PATTERN)
    filter: str | None = None
    documents: bool = False
    syntax: Literal["plain", "lucene"] = "plain"
    fields: str | None = None
    typos: Literal["off", "auto"] = "off"
    text: bool = False
    snippets: bool = False
    fragment_length: int = Field(200, ge=1, le=10_000)


class BatchAnswer(BaseModel):
    answers: list[SearchAnswer]


class WriteAnswer(BaseModel):
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    missing: list[str] = []
    committed: bool
    generation: int


class DeleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[str] = Field(..., max_length=10_000)


class Problem(BaseModel):
    detail: str


# 422 (a parameter of the wrong type) is FastAPI's own answer, with its own schema
PROBLEMS = {status: {"model": Problem} for status in (400, 401, 403, 404, 409, 413)}


# --- metrics ----------------------------------------------------------------------------------------------------------

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request counts by endpoint and status, and latency histograms by endpoint, in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(_BUCKETS) + 1))
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.counts[method, endpoint, status] += 1
            bucket = next((i for i, edge in enumerate(_BUCKETS) if seconds <= edge), len(_BUCKETS))
            self.buckets[method, endpoint][bucket] += 1
            self.sums[method, endpoint] += seconds

    def text(self) -> str:
        lines = ["# HELP sift_requests_total Requests answered, by method, endpoint and status.",
                 "# TYPE sift_requests_total counter"]  # fmt: skip
        with self._lock:
            for (method, endpoint, status), count in sorted(self.counts.items()):
                lines.append(f'sift_requests_total{{method="{method}",endpoint="{endpoint}",status="{status}"}} '
                             f"{count}")  # fmt: skip
            lines += ["# HELP sift_request_seconds Time to answer a request, by method and endpoint.",
                      "# TYPE sift_request_seconds histogram"]  # fmt: skip
            for (method, endpoint), counts in sorted(self.buckets.items()):
                labels = f'method="{method}",endpoint="{endpoint}"'
                total = 0
                for edge, count in zip([*_BUCKETS, "+Inf"], counts):
                    total += count
                    lines.append(f'sift_request_seconds_bucket{{{labels},le="{edge}"}} {total}')
                lines.append(f"sift_request_seconds_sum{{{labels}}} {self.sums[method, endpoint]:.6f}")
                lines.append(f"sift_request_seconds_count{{{labels}}} {total}")
        return "\n".join(lines) + "\n"


# --- the service ------------------------------------------------------------------------------------------------------


class Service:
    """One index directory: the reader searches answer from, and the one writer changes go through."""

    def __init__(self, index_dir: str | Path, api_key: str | None = None, limits: Limits | None = None,
                 commit_interval: float = 1.0, ray: str | None = None, replicas: int = 1) -> None:  # fmt: skip
        """ray, replicas: a sharded index's shards served from Ray actors (engine/sharded.py)."""
        self.index_dir = Path(index_dir)
        self.index = open_index(self.index_dir, ray, replicas=replicas) if ray else open_index(self.index_dir)
        self.api_key = api_key or None
        self.limits = limits or Limits()
        self.commit_interval = commit_interval
        self.metrics = Metrics()
        self._pipelines: dict[tuple[int, str], object] = {}
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sift-writer")  # one writer, changes in order
        self._writer = None
        self._closed = threading.Event()
        self._committer = threading.Thread(target=self._commit_periodically, name="sift-committer", daemon=True)
        self._committer.start()

    # -- searching

    def pipeline(self, expression: str):
        """Pipelines are built once per commit (building one may load a model)."""
        index = self.index
        key = (index.manifest["generation"], expression)
        found = self._pipelines.get(key)
        if found is None:
            from engine.pipeline import Pipeline

            found = Pipeline(index, expression)
            self._pipelines = {k: v for k, v in self._pipelines.items() if k[0] == key[0]}
            self._pipelines[key] = found
        return found

    def search(self, request: SearchRequest) -> dict:
        limits = self.limits
        if len(request.query) > limits.query_chars:
            raise HTTPException(400, f"the query is {len(request.query)} characters; at most {limits.query_chars}")
        depth = (ADAPTIVE_CANDIDATES if request.k == "auto" else request.k) + request.offset
        if depth > limits.depth:
            raise HTTPException(400, f"k + offset is {depth}; at most {limits.depth}")
        if len(request.pipeline) > limits.pipeline_chars or request.pipeline.count("(") > limits.pipeline_stages:
            raise HTTPException(400, f"the pipeline is longer than {limits.pipeline_chars} characters or "
                                     f"{limits.pipeline_stages} stages")  # fmt: skip
        index = self.index
        pipeline = None if request.pipeline == "bm25" else self.pipeline(request.pipeline)
        return answer(index, request, pipeline=pipeline)

    def stats(self) -> dict:
        index = self.index
        manifest = index.manifest
        dense, sparse = sorted(manifest.get("dense", {})), sorted(manifest.get("impact", {}))
        pipelines = ["bm25", *(["dense", "hybrid", "rrf(bm25,dense)"] if dense else [])]
        pipelines += ["splade"] if sparse else []
        segments = getattr(index, "segments", None)  # None: a sharded index, which takes no phrase queries yet
        positions = segments is not None and all(s.positions is not None for s in segments)
        return {**index.stats(), "pipelines": pipelines, "models": {"dense": dense, "splade": sparse},
                "fields": index.fields, "positions": positions,
                "writable": self.api_key is not None}  # fmt: skip

    # -- writing

    def source(self) -> CorpusSource:
        manifest = self.index.manifest
        recorded = manifest.get("source", {})
        text = tuple(recorded.get("text_fields") or ("title", "text"))
        return CorpusSource(self.index_dir, "jsonl", recorded.get("id_field"), text, manifest.get("fields") or {})

    def write(self, change, commit: str) -> dict:
        """Runs change(writer) -> dict on the writer's thread; commit "wait": visible to searches on return,
        "auto": committed within commit_interval."""
        return self._writes.submit(self._write, change, commit).result()

    def _write(self, change, commit: str) -> dict:
        from indexers.writer import IndexWriter

        if is_sharded(self.index_dir):
            raise SiftError(f"{self.index_dir}: the service takes no writes to a sharded index yet; change it with "
                            "sift add / sift delete (the service sees their commits)")  # fmt: skip
        if self._writer is None:  # held from the first staged change to its commit, then freed for others
            self._writer = IndexWriter(self.index_dir, timeout=10, reuse=self.index.segments).__enter__()
        done = change(self._writer)  # add and delete check everything before they stage anything
        if commit == "wait":
            self._commit()
        return {**done, "committed": commit == "wait", "generation": self.index.manifest["generation"]}

    def _commit(self) -> None:
        """A failed commit keeps what is staged (the next commit tries again) and the index as it was."""
        if self._writer is None:
            return
        if self._writer.pending:
            self._writer.commit()
            self.index = self.index.refresh()
        self._writer.__exit__(None, None, None)
        self._writer = None

    def _commit_periodically(self) -> None:
        """Commits staged changes every commit_interval, and sees commits made by other writers."""
        while not self._closed.wait(self.commit_interval):
            try:
                self._writes.submit(self._commit).result()
                self.index = self.index.refresh()
            except Exception as error:  # the next round tries again; the service keeps answering
                print(f"sift serve: commit failed: {error}", file=sys.stderr)

    def close(self) -> None:
        """Commits what is staged and closes the writer: the index is consistent whatever was in flight."""
        self._closed.set()

        def finish() -> None:
            try:
                self._commit()
            finally:
                if self._writer is not None:  # the commit failed: nothing staged is published, the index stays
                    self._writer.__exit__(None, None, None)
                    self._writer = None

        self._writes.submit(finish).result()
        self._writes.shutdown()


class _Guard:
    """ASGI middleware (plain ASGI: Starlette's BaseHTTPMiddleware costs a task per request): 413 for a body over
    the limit, by its declared length or, chunked, by what arrives; requests counted and timed per route; a 405's
    Allow header naming every method of the path (Starlette names the first matching route's only)."""

    def __init__(self, app, service: Service, routes: list) -> None:
        self.app, self.service, self.routes = app, service, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        limit = self.service.limits.body_bytes

        async def answer(message_status: int, detail: str) -> None:
            nonlocal status
            status = message_status
            await JSONResponse({"detail": detail}, message_status)(scope, receive, send)

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 405:
                    message["headers"] = [(k, v) for k, v in message["headers"] if k.lower() != b"allow"]
                    message["headers"].append((b"allow", self._allowed(scope["path"]).encode()))
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await answer(413, f"the body is over {limit:,} bytes")
                return
            if declared is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                body, more = b"", True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        await answer(413, f"the body is over {limit:,} bytes")
                        return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counted)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.service.metrics.observe(scope["method"], endpoint, status, time.perf_counter() - started)

    def _allowed(self, path: str) -> str:
        matching = [r for r in self.routes if isinstance(r, APIRoute) and r.path_regex.match(path)]
        named = [r for r in matching if r.path == path] or matching  # /documents/delete, not /documents/{doc_id}
        return ", ".join(sorted({m for r in named for m in r.methods}))


def _replay(body: bytes, receive):
    """An ASGI receive that gives the body already read, then what the client sends next (its disconnect)."""
    given = False

    async def replayed():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def create_app(service: Service, threads: int | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if threads:
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(title="Sift", version="1", lifespan=lifespan,
                  description="Search one Sift index: BM25, dense, hybrid and reranking pipelines; documents in and "
                  "out with an API key.")  # fmt: skip
    app.add_middleware(_Guard, service=service, routes=app.routes)

    @app.exception_handler(SiftError)
    @app.exception_handler(ValueError)
    async def bad_request(request: Request, error: Exception):
        return JSONResponse({"detail": str(error)}, 400)

    @app.exception_handler(ShardUnavailableError)
    async def shard_unavailable(request: Request, error: Exception):
        return JSONResponse({"detail": str(error)}, 503, headers={"Retry-After": "1"})

    @app.exception_handler(IndexLockedError)
    async def locked(request: Request, error: Exception):
        return JSONResponse({"detail": f"{error}; try again"}, 409, headers={"Retry-After": "1"})

    @app.exception_handler(DocumentNotFoundError)
    async def not_found(request: Request, error: Exception):
        return JSONResponse({"detail": str(error)}, 404)

    def authorized(request: Request) -> None:
        if service.api_key is None:
            raise HTTPException(403, "this service is read-only: start sift serve with --api-key (or SIFT_API_KEY) "
                                     "to accept writes")  # fmt: skip
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise HTTPException(401, "writes need Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(key.strip().encode(), service.api_key.encode()):
            raise HTTPException(403, "wrong API key")

    invalid = {"description": "Validation Error",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}

    @app.get("/search", response_model=SearchAnswer, response_model_exclude_none=True,
             responses={**PROBLEMS, 422: invalid},
             openapi_extra={"parameters": _query_parameters(SearchQuery)})  # fmt: skip
    def search_get(request: Request) -> Response:
        try:  # one model validated at once: FastAPI's per-parameter path cost 0.6 ms a request
            params = SearchQuery.model_validate(dict(request.query_params))
        except ValidationError as error:
            raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in error.errors(include_url=False)]
                                         ) from None  # fmt: skip
        request = SearchRequest(params.q, "auto" if params.k == "auto" else int(params.k), params.offset,
                                params.pipeline, params.filter or None, params.documents, params.syntax,
                                params.fields or None, params.typos, params.text, params.snippets,
                                params.fragment_length)  # fmt: skip
        return _json(service.search(request))

    @app.post("/search", response_model=SearchAnswer | BatchAnswer, response_model_exclude_none=True,
              responses=PROBLEMS)  # fmt: skip
    def search_post(body: SearchBody) -> Response:
        if (body.q is None) == (body.queries is None):
            raise HTTPException(400, "give q (one query) or queries (a batch), not both or neither")
        if body.k != "auto" and not 1 <= body.k <= service.limits.depth:
            raise HTTPException(400, f"k must be between 1 and {service.limits.depth}, or auto")
        options = body.model_dump(exclude={"q", "queries"})
        options.update(filter=body.filter or None, fields=body.fields or None)
        if body.q is not None:
            return _json(service.search(SearchRequest(body.q, **options)))
        if len(body.queries) > service.limits.batch_queries:
            raise HTTPException(400, f"{len(body.queries)} queries; a batch holds at most "
                                     f"{service.limits.batch_queries}")  # fmt: skip
        if not all(body.queries):
            raise HTTPException(400, "a query of the batch is empty")
        return _json({"answers": [service.search(SearchRequest(query, **options)) for query in body.queries]})

    @app.get("/documents/{doc_id}", responses=PROBLEMS)
    def document(doc_id: str) -> dict:
        index = service.index
        passages = index.document_passages(doc_id)
        if not len(passages):
            raise HTTPException(404, f"no document {doc_id!r} in the index")
        records = [index.fetch(int(p)) for p in passages]
        first = records[0]
        return {"id": doc_id, "title": first.get("title", ""), "fields": first.get("fields", {}),
                "passages": [{"part": r.get("part", 0), "text": r.get("text", "")} for r in records]}  # fmt: skip

    @app.post("/documents", response_model=WriteAnswer, responses=PROBLEMS, dependencies=[Depends(authorized)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "array", "items": {"type": "object"}, "minItems": 1}},
                  "application/x-ndjson": {"schema": {"type": "string"}}}}})  # fmt: skip
    async def add_documents(request: Request, commit: Literal["wait", "auto"] = "wait") -> dict:
        raw = await request.body()
        documents = _read_documents(raw, request.headers.get("content-type", ""), service)
        return await run_in_threadpool(service.write, lambda w: dict(zip(("added", "replaced"), w.add(documents))),
                                       commit)  # fmt: skip

    @app.delete("/documents/{doc_id}", response_model=WriteAnswer, responses=PROBLEMS,
                dependencies=[Depends(authorized)])  # fmt: skip
    def delete_document(doc_id: str, commit: Literal["wait", "auto"] = "wait") -> dict:
        return service.write(lambda w: _deleted(w, [doc_id]), commit)

    @app.post("/documents/delete", response_model=WriteAnswer, responses=PROBLEMS,
              dependencies=[Depends(authorized)])  # fmt: skip
    def delete_documents(body: DeleteBody, commit: Literal["wait", "auto"] = "wait") -> dict:
        return service.write(lambda w: _deleted(w, body.ids), commit)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "generation": service.index.manifest["generation"]}

    @app.get("/stats")
    def stats() -> dict:
        return service.stats()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return service.metrics.text()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def _query_parameters(model: type[BaseModel]) -> list[dict]:
    """A model's fields as OpenAPI query parameters."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": field,
             **({"description": field["description"]} if "description" in field else {})}
            for name, field in schema["properties"].items()]  # fmt: skip


def _json(answer: dict) -> Response:
    """The answer as sift search --json prints it. The response models document it (schemathesis holds answers to
    them); checking each hit against them again here would cost as much as the search."""
    return Response(json.dumps(answer).encode(), media_type="application/json")


def _deleted(writer, ids: list[str]) -> dict:
    missing = writer.delete(ids)
    return {"deleted": len(set(ids)) - len(missing), "missing": missing}


def _read_documents(raw: bytes, content_type: str, service: Service) -> list:
    """A JSON array of records, or NDJSON (one record a line); a bad record is a 400 naming it (request:N)."""
    limit = service.limits.batch_documents
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8") from None
    try:
        if "ndjson" in content_type or "jsonl" in content_type:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(records, list) or not records:
        raise HTTPException(400, "expected a non-empty JSON array of documents (or NDJSON, one a line)")
    if len(records) > limit:
        raise HTTPException(400, f"{len(records)} documents; at most {limit} a request")
    source = service.source()
    try:
        return [record_document(record, source, "request", number) for number, record in enumerate(records, 1)]
    except CorpusError as error:
        raise HTTPException(400, str(error)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None,
          threads: int | None = None, commit_interval: float = 1.0, log_level: str = "warning",
          ray: str | None = None, replicas: int = 1) -> None:  # fmt: skip
    import uvicorn

    if not is_loopback(host) and not api_key:
        raise SiftError(f"refusing to listen on {host} without an API key: anyone who reaches it could search the "
                        "index; pass --api-key KEY (or set SIFT_API_KEY), or bind to 127.0.0.1")  # fmt: skip
    if not is_sharded(index_dir):
        read_manifest(Path(index_dir))
    elif ray is None and replicas != 1:
        raise SiftError("--replicas serves each shard from that many Ray actors: pass --ray too")
    service = Service(index_dir, api_key, commit_interval=commit_interval, ray=ray, replicas=replicas)
    uvicorn.run(create_app(service, threads), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=30)  # fmt: skip
