"""Sync history: one row per sync in SQLite (``state_dir/history.db``).

A sync is recorded as ``running`` when it starts and updated when it ends, so a
sync cut off by a crash is found still ``running`` at the next start and marked
``interrupted``. Retention is bounded (newest ``keep`` rows).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.redact import Redactor

SCHEMA = """
CREATE TABLE IF NOT EXISTS syncs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    agent     TEXT NOT NULL,
    trigger   TEXT NOT NULL,
    revision  TEXT,
    commit_sha TEXT,
    started   REAL NOT NULL,
    finished  REAL,
    outcome   TEXT NOT NULL,
    reason    TEXT,
    message   TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS syncs_commit ON syncs(commit_sha);
"""


@dataclass(frozen=True)
class SyncRecord:
    id: int
    agent: str
    trigger: str
    revision: str | None
    commit: str | None
    started: float
    finished: float | None
    outcome: str
    reason: str | None
    message: str
    detail: dict[str, Any]

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else max(0.0, self.finished - self.started)

    def to_json(self, with_detail: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "agent": self.agent,
            "trigger": self.trigger,
            "revision": self.revision,
            "commit": self.commit,
            "started": self.started,
            "finished": self.finished,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
        }
        if with_detail:
            out["detail"] = self.detail
        return out


class History:
    def __init__(self, state_dir: str, agent: str, keep: int = 1000, redactor: Redactor = Redactor()) -> None:
        self.path = Path(state_dir) / "history.db"
        self.agent = agent
        self.keep = keep
        self.redactor = redactor  # what records must never hold (the agent swaps it on reload)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{self.path}: cannot open the sync history: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def mark_interrupted(self) -> int:
        """Syncs still `running` belong to an agent that died: say so."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE syncs SET outcome='interrupted', finished=COALESCE(finished, started), "
                "message=CASE WHEN message='' THEN 'cut off: the agent stopped or crashed during this sync' ELSE message END "
                "WHERE outcome='running' AND agent=?",
                (self.agent,),
            )
            return cur.rowcount

    def start(self, trigger: str, started: float | None = None) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO syncs(agent, trigger, started, outcome) VALUES (?, ?, ?, 'running')",
                (self.agent, trigger, started or time.time()),
            )
            return int(cur.lastrowid or 0)

    def update(self, sync_id: int, **fields: Any) -> None:
        allowed = {"revision", "commit_sha", "finished", "outcome", "reason", "message", "detail"}
        fields = {k: self.redactor.data(v) for k, v in fields.items() if k in allowed}  # never stored in the clear
        cols = {k: (json.dumps(v, sort_keys=True) if k == "detail" else v) for k, v in fields.items()}
        if not cols:
            return
        sets = ", ".join(f"{k}=?" for k in cols)
        with self._lock:
            self._db.execute(f"UPDATE syncs SET {sets} WHERE id=?", (*cols.values(), sync_id))  # noqa: S608 - fixed column names
            self._db.execute(
                "DELETE FROM syncs WHERE agent=? AND id <= (SELECT id FROM syncs WHERE agent=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.agent, self.agent, self.keep),
            )

    def get(self, sync_id: int) -> SyncRecord | None:
        rows = self._query("SELECT * FROM syncs WHERE id=? AND agent=?", (sync_id, self.agent))
        return rows[0] if rows else None

    def recent(self, limit: int = 50, revision: str | None = None) -> list[SyncRecord]:
        if revision:
            rev = revision.split(":")[-1].lower()
            return self._query(
                "SELECT * FROM syncs WHERE agent=? AND (commit_sha LIKE ? OR revision = ?) ORDER BY id DESC LIMIT ?",
                (self.agent, rev + "%", revision, limit),
            )
        return self._query("SELECT * FROM syncs WHERE agent=? ORDER BY id DESC LIMIT ?", (self.agent, limit))

    def last_success(self) -> SyncRecord | None:
        rows = self._query("SELECT * FROM syncs WHERE agent=? AND outcome='success' ORDER BY id DESC LIMIT 1", (self.agent,))
        return rows[0] if rows else None

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[SyncRecord]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            try:
                detail = json.loads(r[10] or "{}")
            except ValueError:
                detail = {}
            out.append(SyncRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9] or "", detail))
        return out
