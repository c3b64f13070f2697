"""The CATE cache: one sqlite file of finished results, keyed by a hash of everything that made them.

Each put is its own transaction, so a run killed at any point leaves every finished item stored whole and
nothing half written; a rerun looks its items up and does only the missing ones.

>>> with Cache("/tmp/cate.sqlite") as cache:
...     key = cache_key(task="refine", caption="A man speaks.", labels=["happiness"])
...     cache.put(key, {"description": "A man speaks, smiling."})
...     cache.get(key)["description"]
'A man speaks, smiling.'
"""

import hashlib
import json
import os
import sqlite3
from pathlib import Path


def cache_key(**fields) -> str:
    """A sha256 hex digest of the fields (JSON-serialisable), independent of their order."""
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """A key -> JSON value store in one sqlite file; use from one thread."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            # WAL + NORMAL: each commit survives a killed process; only a power cut may lose the latest ones
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as error:
            raise ValueError(f"cache file {self.path} is not a grace_fast cache (sqlite): {error}") from error

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: dict) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def put_many(self, items: dict[str, dict]) -> None:
        """Store several results in one transaction: all of them or none."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in items.items()],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
