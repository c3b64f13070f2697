"""The refiner against a real HTTP chat completions server on 127.0.0.1, with faults, the cache and resumption."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grace_fast.cli import main
from grace_fast.text.cache import Cache
from grace_fast.text.jobs import read_jsonl
from grace_fast.text.lexicon import Lexicon
from grace_fast.text.prompt import PROMPT_VERSION, TEMPLATE_VERSION, render_messages, template_description
from grace_fast.text.refiner import (
    ClipText,
    Endpoint,
    EndpointError,
    Refiner,
    RequestFailed,
    load_descriptions,
    refine_clips,
)
from tests.text.chat_server import ChatServer, reply

REPO = Path(__file__).resolve().parents[2]
LEXICON = Lexicon.load()
LABELS = ("happiness", "surprise")
FAST_RETRY = dict(timeout=1.0, max_retries=2, backoff=0.001, max_backoff=0.01)


def _clips(n: int) -> list[ClipText]:
    return [ClipText(f"c{i:02d}", f"caption {i}", LABELS) for i in range(n)]


def _refiner(server: ChatServer, model: str = "test-model") -> Refiner:
    return Refiner(LEXICON, Endpoint(server.url, model, "test-key", **FAST_RETRY))


def _cached(cache_path: Path) -> dict[str, str]:
    """Every cached description, read straight from the sqlite file."""
    db = sqlite3.connect(cache_path)
    try:
        return {key: json.loads(value)["description"] for key, value in db.execute("SELECT key, value FROM entries")}
    finally:
        db.close()


@pytest.fixture(autouse=True)
def _no_endpoint_in_env(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)


def test_requests_carry_the_rendered_prompt_at_temperature_zero(tmp_path):
    with ChatServer() as server, Cache(tmp_path / "c.sqlite") as cache:
        records, summary = refine_clips(_clips(1), _refiner(server), cache, progress=False)
    (body,) = server.bodies
    assert body["model"] == "test-model" and body["temperature"] == 0
    assert body["messages"] == render_messages("caption 0", LABELS, LEXICON)
    assert records == {
        "c00": {
            "clip": "c00",
            "caption": "caption 0",
            "labels": list(LABELS),
            "description": reply("caption 0"),
            "source": "test-model",
            "prompt_version": PROMPT_VERSION,
        }
    }
    assert (summary.done, summary.cached, summary.failed) == (1, 0, {})


FAULTS = {  # script for clip c01 -> (requests it gets, error of a final failure or None)
    "500-then-ok": (["500"], 2, None),
    "429-then-ok": (["429"], 2, None),
    "timeout-then-ok": (["timeout"], 2, None),
    "malformed-json-then-ok": (["malformed"], 2, None),
    "no-choices-then-ok": (["empty"], 2, None),
    "500-always": (["500"] * 3, 3, "HTTP 500: scripted 500 (after 3 attempts)"),
    "timeout-always": (["timeout"] * 3, 3, "timed out after 1.0 s (after 3 attempts)"),
    "malformed-always": (["malformed"] * 3, 3, "malformed response"),
    "400-no-retry": (["400"], 1, "HTTP 400: scripted 400"),
}


@pytest.mark.parametrize("script, requests, error", FAULTS.values(), ids=FAULTS.keys())
def test_faults_are_retried_and_only_successes_are_cached(tmp_path, script, requests, error):
    clips = _clips(3)
    with ChatServer(timeout_sleep=1.6) as server:
        server.scripts["caption 1"] = list(script)
        with Cache(tmp_path / "c.sqlite") as cache:
            records, summary = refine_clips(clips, _refiner(server), cache, concurrency=2, progress=False)
        assert server.captions() == {"caption 0": 1, "caption 1": requests, "caption 2": 1}
        succeeded = [c for c in clips if error is None or c.clip != "c01"]
        assert {c: r["description"] for c, r in records.items()} == {c.clip: reply(c.caption) for c in succeeded}
        assert sorted(_cached(tmp_path / "c.sqlite").values()) == sorted(reply(c.caption) for c in succeeded)
        if error is None:
            assert (summary.done, summary.failed) == (3, {})
            return
        assert summary.done == 2 and list(summary.failed) == ["c01"] and error in summary.failed["c01"]

        # the next run asks again for the failed clip only
        with Cache(tmp_path / "c.sqlite") as cache:
            records, summary = refine_clips(clips, _refiner(server), cache, progress=False)
        assert server.captions() == {"caption 0": 1, "caption 1": requests + 1, "caption 2": 1}
        assert (summary.done, summary.cached, summary.failed) == (1, 2, {})
        assert records["c01"]["description"] == reply("caption 1")


@pytest.mark.parametrize("action", ["trickle", "trickle-headers"])
def test_the_timeout_limits_the_whole_request_against_a_trickling_server(action):
    with ChatServer(trickle=0.1) as server:  # the answer would take about 30 s
        refiner = Refiner(LEXICON, Endpoint(server.url, "m", "k", timeout=1.0, max_retries=0))
        server.scripts["caption 0"] = [action]
        start = time.monotonic()
        with pytest.raises(RequestFailed, match=r"timed out after 1.0 s \(after 1 attempts\)"):
            refiner.describe("caption 0", LABELS)
        assert time.monotonic() - start < 1.6


def test_401_stops_the_run_at_once_with_a_clear_error(tmp_path):
    with ChatServer() as server, Cache(tmp_path / "c.sqlite") as cache:
        server.always = "401"
        with pytest.raises(EndpointError, match=r"HTTP 401 \(scripted 401\) for model 'test-model'; check --api-key"):
            refine_clips(_clips(4), _refiner(server), cache, concurrency=1, progress=False)
        assert len(server.bodies) == 1
        assert len(cache) == 0


def test_the_cli_exits_2_on_401_and_writes_no_output(tmp_path, capsys):
    _write_inputs(tmp_path, _clips(2))
    with ChatServer() as server:
        server.always = "401"
        args = ["--base-url", server.url, "--api-key", "bad", "--retries", "3", "--concurrency", "1"]
        code = main(["refine", *_io_args(tmp_path), *args])
    assert code == 2 and len(server.bodies) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("grace-fast refine: error: the endpoint") and "HTTP 401" in last
    assert not (tmp_path / "refined.jsonl").exists()


def test_a_second_run_makes_no_requests_for_cached_clips(tmp_path):
    clips = _clips(5)
    with ChatServer() as server:
        with Cache(tmp_path / "c.sqlite") as cache:
            first, _ = refine_clips(clips, _refiner(server), cache, progress=False)
        with Cache(tmp_path / "c.sqlite") as cache:
            second, summary = refine_clips(clips, _refiner(server), cache, progress=False)
        assert len(server.bodies) == 5
        assert (summary.done, summary.cached) == (0, 5) and second == first

        # another model is another key: asked again
        with Cache(tmp_path / "c.sqlite") as cache:
            _, summary = refine_clips(clips[:2], _refiner(server, "other-model"), cache, progress=False)
        assert len(server.bodies) == 7 and summary.done == 2


def test_clips_with_the_same_inputs_share_one_request(tmp_path):
    clips = [ClipText("a", "same", LABELS), ClipText("b", "same", LABELS), ClipText("c", "same", ("sadness",))]
    with ChatServer() as server, Cache(tmp_path / "c.sqlite") as cache:
        records, summary = refine_clips(clips, _refiner(server), cache, progress=False)
        assert len(server.bodies) == 2 and summary.done == 3 and len(cache) == 2
    assert records["a"]["description"] == records["b"]["description"] == reply("same")


def test_without_an_endpoint_the_template_stands_in(tmp_path):
    with Cache(tmp_path / "c.sqlite") as cache:
        records, _ = refine_clips(_clips(2), Refiner(LEXICON), cache, progress=False)
    assert records["c01"]["description"] == template_description("caption 1", LABELS, LEXICON)
    assert (records["c01"]["source"], records["c01"]["prompt_version"]) == ("template", TEMPLATE_VERSION)


def test_endpoint_from_env(monkeypatch):
    assert Endpoint.from_env() is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert Endpoint.from_env() == Endpoint("http://127.0.0.1:9/v1", "gpt-4o-mini", None)
    monkeypatch.setenv("OPENAI_MODEL", "llama")
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    assert Endpoint.from_env(model="qwen", timeout=5.0) == Endpoint("http://127.0.0.1:9/v1", "qwen", "env-key", 5.0)
    with pytest.raises(ValueError, match="timeout must be > 0, got 0"):
        Endpoint(timeout=0)


def _write_inputs(folder: Path, clips: list[ClipText], unlabelled: tuple[str, ...] = ()) -> None:
    captions = [{"clip": c.clip, "caption": c.caption} for c in clips]
    captions += [{"clip": clip, "caption": "no labels"} for clip in unlabelled]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    labels = [{"clip": c.clip, "labels": list(c.labels), "scores": [0.6, 0.3]} for c in clips]
    (folder / "coarse_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))


def _io_args(folder: Path) -> list[str]:
    return ["--captions", str(folder / "captions.jsonl"), "--out", str(folder / "refined.jsonl")]


def test_the_cli_uses_the_template_without_an_endpoint_and_reports_unlabelled_clips(tmp_path, capsys):
    _write_inputs(tmp_path, _clips(2), unlabelled=("c99",))
    assert main(["refine", *_io_args(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "using the template" in out
    assert "refine: 2 done, 0 cached, 1 failed" in out and "failed c99: no coarse labels in" in out
    assert load_descriptions(tmp_path / "refined.jsonl") == {
        c.clip: template_description(c.caption, LABELS, LEXICON) for c in _clips(2)
    }
    assert (tmp_path / "cate_cache.sqlite").is_file()


def test_the_cli_reads_the_endpoint_from_the_environment(tmp_path, monkeypatch, capsys):
    _write_inputs(tmp_path, _clips(3))
    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_MODEL", "env-model")
        assert main(["refine", *_io_args(tmp_path), "--concurrency", "3"]) == 0
        assert main(["refine", *_io_args(tmp_path)]) == 0
    assert {b["model"] for b in server.bodies} == {"env-model"} and len(server.bodies) == 3
    assert "refine: 0 done, 3 cached, 0 failed" in capsys.readouterr().out
    records = read_jsonl(tmp_path / "refined.jsonl", "refined")
    assert [(r["clip"], r["description"], r["source"]) for r in records] == [
        (c.clip, reply(c.caption), "env-model") for c in _clips(3)
    ]


def test_a_run_killed_midway_resumes_with_nothing_lost_or_duplicated(tmp_path):
    clips = _clips(24)
    _write_inputs(tmp_path, clips)
    cache_path = tmp_path / "cate_cache.sqlite"
    with ChatServer(delay=0.15) as server:
        args = ["refine", *_io_args(tmp_path), "--base-url", server.url, "--api-key", "k", "--concurrency", "2"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        with open(tmp_path / "stderr.txt", "w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "grace_fast", *args], cwd=REPO, env=env, stderr=stderr)
            deadline = time.monotonic() + 120
            while _count(cache_path) < 4 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
        stored = set(_cached(cache_path).values())
        assert 4 <= len(stored) < len(clips)
        assert not (tmp_path / "refined.jsonl").exists()

        asked_before = server.captions()
        assert main(args) == 0
        asked_after = server.captions() - asked_before
    expected = {c.caption for c in clips if reply(c.caption) not in stored}
    assert set(asked_after) == expected and set(asked_after.values()) == {1}
    records = read_jsonl(tmp_path / "refined.jsonl", "refined")
    assert [(r["clip"], r["description"]) for r in records] == [(c.clip, reply(c.caption)) for c in clips]
    assert sorted(_cached(cache_path).values()) == sorted(reply(c.caption) for c in clips)


def _count(cache_path: Path) -> int:
    if not cache_path.exists():
        return 0
    try:
        db = sqlite3.connect(cache_path)
        try:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
