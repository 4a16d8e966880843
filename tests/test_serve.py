"""`sift serve`: the real server in a subprocess on a free port, talked to over HTTP."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import random_documents, write_jsonl  # noqa: E402
from sift.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index_dir: Path, key: str | None = KEY, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("SIFT_API_KEY", None)
        if key:
            env["SIFT_API_KEY"] = key
        self.process = subprocess.Popen([sys.executable, "-m", "sift", "serve", str(index_dir), "--port",
                                         str(self.port), *extra], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server stopped: {self.process.stdout.read()}") from None
                time.sleep(0.1)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    records = [{**d, "title": f"{d['title']} {d['_id']}", "year": 2000 + i % 20}
               for i, d in enumerate(random_documents(300, seed=3))]  # fmt: skip
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", records)


@pytest.fixture
def index_dir(tmp_path, corpus) -> Path:
    assert main(["index", str(corpus), str(tmp_path / "idx"), "--positions", "--field", "year:int", "--quiet"]) == 0
    return tmp_path / "idx"


@pytest.fixture
def server(index_dir):
    running = Server(index_dir, KEY, "--commit-interval", "0.2")
    yield running
    running.stop()


def cli_search(index_dir: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "sift", "search", str(index_dir), *args, "--json"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def without_timings(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key not in ("took_ms", "stages_ms")}


CASES = [
    ({"q": "money bank river"}, ["money bank river"]),
    ({"q": "fox", "k": "3", "offset": "2"}, ["fox", "-k", "3", "--offset", "2"]),
    ({"q": "fox AND NOT river", "syntax": "lucene", "snippets": "true"},
     ["fox AND NOT river", "--syntax", "lucene", "--snippets"]),
    ({"q": "quick fox", "filter": "year >= 2010", "text": "true"}, ["quick fox", "--filter", "year >= 2010", "--text"]),
    ({"q": "fox river", "k": "auto"}, ["fox river", "-k", "auto"]),
    ({"q": "fox", "fields": "title^2,text"}, ["fox", "--fields", "title^2,text"]),
]


def test_search_answers_exactly_as_the_cli(server, index_dir):
    for params, args in CASES:
        response = server.client.get("/search", params=params)
        assert response.status_code == 200, response.text
        assert without_timings(response.json()) == without_timings(cli_search(index_dir, *args)), params
    single = [server.client.get("/search", params={"q": q, "k": "5"}).json() for q in ("fox", "bank money")]
    batch = server.client.post("/search", json={"queries": ["fox", "bank money"], "k": 5}).json()["answers"]
    assert [without_timings(a) for a in batch] == [without_timings(a) for a in single]
    one = server.client.post("/search", json={"q": "fox", "k": 5}).json()
    assert without_timings(one) == without_timings(single[0])


def test_writes_are_seen_by_the_next_search(server, index_dir):
    auth = {"Authorization": f"Bearer {KEY}"}
    added = server.client.post("/documents", headers=auth, json=[{"_id": "z1", "title": "Zebra", "text": "zebra"}])
    assert added.status_code == 200 and added.json()["added"] == 1 and added.json()["committed"]
    assert [h["id"] for h in server.client.get("/search", params={"q": "zebra"}).json()["results"]] == ["z1"]
    ndjson = '{"_id": "z1", "text": "okapi"}\n{"_id": "z2", "text": "okapi zebra"}\n'
    upserted = server.client.post("/documents", headers={**auth, "Content-Type": "application/x-ndjson"},
                                  content=ndjson).json()  # fmt: skip
    assert (upserted["added"], upserted["replaced"]) == (1, 1)
    assert [h["id"] for h in server.client.get("/search", params={"q": "zebra"}).json()["results"]] == ["z2"]
    assert server.client.get("/documents/z1").json()["passages"][0]["text"] == "okapi"
    deleted = server.client.delete("/documents/z2", headers=auth).json()
    assert deleted["deleted"] == 1 and server.client.get("/documents/z2").status_code == 404
    gone = server.client.post("/documents/delete", headers=auth, json={"ids": ["z1", "nope"]}).json()
    assert (gone["deleted"], gone["missing"]) == (1, ["nope"])
    later = server.client.post("/documents?commit=auto", headers=auth, json=[{"_id": "z3", "text": "quokka"}])
    assert later.json()["committed"] is False
    for _ in range(100):  # committed within the interval (0.2 s)
        if server.client.get("/search", params={"q": "quokka"}).json()["results"]:
            break
        time.sleep(0.05)
    assert [h["id"] for h in server.client.get("/search", params={"q": "quokka"}).json()["results"]] == ["z3"]
    outside = write_jsonl(index_dir.parent / "outside.jsonl", [{"_id": "o1", "text": "wombat"}])
    assert main(["add", str(index_dir), str(outside), "--wait", "10", "--quiet"]) == 0  # the service holds no lock
    for _ in range(100):  # another writer's commit is seen within the interval
        if server.client.get("/search", params={"q": "wombat"}).json()["results"]:
            break
        time.sleep(0.05)
    assert [h["id"] for h in server.client.get("/search", params={"q": "wombat"}).json()["results"]] == ["o1"]
    metrics = server.client.get("/metrics").text
    assert 'sift_requests_total{method="POST",endpoint="/documents",status="200"} 3' in metrics
    assert 'sift_request_seconds_bucket{method="GET",endpoint="/search",le="+Inf"}' in metrics


def test_writes_need_the_key_and_limits_are_clear_4xx(server):
    record = [{"_id": "w", "text": "x"}]
    assert server.client.post("/documents", json=record).status_code == 401
    assert server.client.post("/documents", json=record, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert server.client.delete("/documents/d1").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    problems = [
        server.client.get("/search", params={"q": "fox", "k": "1000", "offset": "1"}),
        server.client.get("/search", params={"q": "fox " * 600}),
        server.client.get("/search", params={"q": "fox", "pipeline": "nosuch"}),
        server.client.get("/search", params={"q": "fox", "pipeline": "dense"}),  # no dense part in this index
        server.client.get("/search", params={"q": "fox", "filter": "year >>"}),
        server.client.get("/search", params={"q": "fox AND", "syntax": "lucene"}),
        server.client.get("/search", params={"q": "fox", "fields": "summary"}),
        server.client.post("/search", json={"queries": ["fox"] * 101}),
        server.client.post("/search", json={"q": "fox", "queries": ["fox"]}),
        server.client.post("/documents", headers=auth, json=[{"_id": "x", "text": 5}]),
        server.client.post("/documents", headers=auth, content=b"[{"),
        server.client.post("/documents", headers=auth, json={"_id": "x"}),
    ]
    assert [p.status_code for p in problems] == [400] * len(problems), [p.text for p in problems]
    assert all(p.json()["detail"] for p in problems)
    assert "request:1" in problems[9].json()["detail"]
    huge = server.client.post("/documents", headers=auth, content=b"[" + b" " * (17 * 2**20) + b"]")
    assert huge.status_code == 413
    chunked = server.client.post("/documents", headers=auth, content=iter([b"[" + b" " * 2**20] * 17 + [b"]"]))
    assert chunked.status_code == 413 and "bytes" in chunked.json()["detail"]
    assert server.client.put("/documents/delete").headers["allow"] == "POST"
    assert server.client.put("/documents/d1").headers["allow"] == "DELETE, GET"
    assert server.client.get("/search", params={"q": "fox", "k": "0"}).status_code == 422
    assert server.client.get("/documents/nope").status_code == 404
    stats = server.client.get("/stats").json()
    assert stats["documents"] == 300 and stats["pipelines"] == ["bm25"] and stats["fields"] == {"year": "int"}
    assert server.client.get("/openapi.json").json()["paths"]["/search"]
    assert server.client.get("/docs").status_code == 200


def test_read_only_without_a_key_and_no_open_bind_without_one(index_dir):
    server = Server(index_dir, None)
    try:
        refused = server.client.post("/documents", json=[{"_id": "w", "text": "x"}],
                                     headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
        assert server.client.get("/search", params={"q": "fox"}).status_code == 200
    finally:
        server.stop()
    env = {key: value for key, value in os.environ.items() if key != "SIFT_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    opened = subprocess.run([sys.executable, "-m", "sift", "serve", str(index_dir), "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert opened.returncode != 0 and "without an API key" in opened.stderr


def test_sigterm_commits_staged_writes_and_leaves_the_index_consistent(index_dir):
    server = Server(index_dir, KEY, "--commit-interval", "600")
    auth = {"Authorization": f"Bearer {KEY}"}
    staged = server.client.post("/documents?commit=auto", headers=auth,
                                json=[{"_id": f"s{i}", "text": "staged words"} for i in range(50)])  # fmt: skip
    assert staged.json()["committed"] is False
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down gracefully
    assert main(["check", str(index_dir)]) == 0
    from engine.index import open_index

    assert len(open_index(index_dir).search("staged", 100)) == 50


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_the_search_page_in_a_real_browser(server):
    found = _chromium()
    if found is None:
        pytest.skip("no Chromium and chromedriver here (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))

    def shown(b) -> list[str]:  # the result ids on the page, as it renders them
        return [e.text.split(" · ")[0] for e in b.find_elements(By.CSS_SELECTOR, ".hit .meta")]

    try:
        wait = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
        browser.get(server.url + "/")
        wait.until(lambda b: "documents" in b.find_element(By.ID, "status").text)
        browser.find_element(By.ID, "q").send_keys("fox")
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        expected = [h["id"] for h in server.client.get("/search", params={"q": "fox", "k": "20"}).json()["results"]]
        wait.until(lambda b: shown(b) == expected[:10])
        assert all(m.text.lower() == "fox" for m in browser.find_elements(By.CSS_SELECTOR, ".hit mark"))
        assert browser.find_elements(By.CSS_SELECTOR, ".hit mark")
        browser.find_element(By.ID, "next").click()
        wait.until(lambda b: shown(b) == expected[10:20])
        browser.find_element(By.ID, "filter").send_keys("year = 2003")
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        filtered = server.client.get("/search", params={"q": "fox", "filter": "year = 2003"}).json()["results"]
        wait.until(lambda b: shown(b) == [h["id"] for h in filtered])
    finally:
        browser.quit()


@pytest.mark.slow
def test_fuzzing_the_openapi_document_finds_no_server_error(server):
    """schemathesis over every operation, with the key and without: no 5xx, no answer outside the schema, no
    request outside the schema accepted. Left out: positive_data_acceptance, which expects every schema-valid
    request to succeed; rules no schema states are 400s by design (k + offset over the limit, an unknown pipeline,
    a document without an id)."""
    schemathesis = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(schemathesis).exists():
        pytest.skip("schemathesis is not installed")
    generated = 0
    for headers in ([], ["-H", f"Authorization: Bearer {KEY}"]):
        result = subprocess.run([schemathesis, "run", f"{server.url}/openapi.json", "--checks", "all",
                                 "--exclude-checks", "positive_data_acceptance", "--max-examples", "40", "--seed", "1",
                                 *headers], capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:]
        generated += int(re.search(r"(\d+) generated", result.stdout).group(1))
    assert generated >= 1000


@pytest.mark.slow
def test_a_sharded_index_served_from_ray_actors_answers_as_one_index(tmp_path, corpus, index_dir):
    """sift serve --ray auto over `sift index --shards 3`: /search equals one index's answer (ids and scores) with
    filters and pages, /stats counts every shard, and a write is a clear 400, not a change to one shard."""
    pytest.importorskip("ray")
    sharded = tmp_path / "sharded"
    assert main(["index", str(corpus), str(sharded), "--shards", "3", "--field", "year:int", "--quiet"]) == 0
    one, served = Server(index_dir, None), Server(sharded, KEY, "--ray", "auto", "--replicas", "2")
    try:
        for body in ({"q": "quick brown fox", "k": 10}, {"q": "river bank", "k": 5, "offset": 5},
                     {"q": "money stream", "k": 20, "filter": "year >= 2010"}):  # fmt: skip
            want = one.client.post("/search", json=body).json()["results"]
            got = served.client.post("/search", json=body).json()["results"]
            assert [(r["id"], r["score"], r["rank"]) for r in got] == [(r["id"], r["score"], r["rank"]) for r in want]
        assert served.client.get("/stats").json()["documents"] == 300
        refused = served.client.post("/documents", json=[{"_id": "x", "text": "new"}],
                                     headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert refused.status_code == 400 and "sharded" in refused.json()["detail"]
    finally:
        one.stop()
        served.stop()
