"""What the CATE commands share: JSONL files written atomically, the cached batch loop over videos, the summary.

Every command reads and writes one record per clip as a JSON line ({"clip": ..., ...}); an output file is
replaced whole at the end of a run, never appended to, so a reader never sees half of it.
"""

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from grace_fast.data.video import VideoReadError
from grace_fast.text.cache import Cache, cache_key

CACHE_NAME = "cate_cache.sqlite"
LABELS_NAME = "coarse_labels.jsonl"


def read_jsonl(path: str | os.PathLike, what: str) -> list[dict]:
    """The records of a JSONL file, each with a distinct "clip" field; `what` names the file's role in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    records, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{what}: {path} line {number} is not JSON ({error})") from error
        if not isinstance(record, dict) or "clip" not in record:
            raise ValueError(f'{what}: {path} line {number} has no "clip" field')
        if record["clip"] in seen:
            raise ValueError(f"{what}: {path} line {number} repeats clip {record['clip']!r}")
        seen.add(record["clip"])
        records.append(record)
    return records


def fingerprint(path: str | os.PathLike) -> list:
    """[absolute path, size, mtime_ns] of a file, or of every file in a folder: changes when the content does."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


@dataclass
class Summary:
    """What a run did: items done now, found in the cache, and failed (clip -> reason; retried next run)."""

    done: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def report(self, command: str, limit: int = 20) -> None:
        print(f"{command}: {self.done} done, {self.cached} cached, {len(self.failed)} failed")
        for clip, reason in list(self.failed.items())[:limit]:
            print(f"  failed {clip}: {reason}")
        if len(self.failed) > limit:
            print(f"  ... and {len(self.failed) - limit} more")


def process_videos(
    clips: Sequence[tuple[str, str]],
    settings: dict,
    load: Callable,
    process: Callable[[list], list[dict]],
    cache: Cache,
    *,
    batch_size: int,
    desc: str,
    progress: bool = True,
) -> tuple[dict[str, dict], Summary]:
    """Run process over batches of load(video path) for every (clip id, path) whose result is not cached yet.

    The cache key of a clip is its video's fingerprint plus `settings` (what else decides the result); each
    batch's results (one dict per loaded video) are stored in one transaction. A video that load() cannot read
    (VideoReadError) fails alone. Returns the results of all clips (cached or new), by clip, and the summary.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results, summary, todo = {}, Summary(), []
    for clip, path in clips:
        key = cache_key(video=fingerprint(path), **settings) if os.path.isfile(path) else None
        hit = cache.get(key) if key else None
        if hit is not None:
            results[clip] = hit
            summary.cached += 1
        else:
            todo.append((clip, path, key))
    with tqdm(total=len(clips), initial=summary.cached, desc=desc, unit="clip", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk, batch, inputs = todo[start : start + batch_size], [], []
            for clip, path, key in chunk:
                try:
                    inputs.append(load(path))
                    batch.append((clip, key))
                except VideoReadError as error:
                    summary.failed[clip] = str(error)
            if batch:
                values = process(inputs)
                cache.put_many({key: value for (_, key), value in zip(batch, values, strict=True)})
                results.update({clip: value for (clip, _), value in zip(batch, values, strict=True)})
                summary.done += len(batch)
            bar.update(len(chunk))
    return results, summary
