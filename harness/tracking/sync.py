"""`harness sync`: send what runs kept in their journals while the tracking server was away.

A run whose server did not come back before it ended says so in one line and leaves `<run folder>/journal/`. Once the
server answers again, `harness sync` (all journals under `.harness`) or `harness sync <folder>` sends each one in
order and closes its run with the status it ended with. The journal does not store the tracking URI (it may hold a
password): the URI comes from `--tracking-uri` or $MLFLOW_TRACKING_URI, and must be the one the run used (the run's
state file keeps a hash of it to check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.config import redact_uri
from harness.errors import ConfigError, TrackingError
from harness.tracking import offline
from harness.tracking.journal import PENDING, Journal, answers, find, record


@dataclass
class Synced:
    folder: Path
    run_id: str
    sent: int
    left: int


def journals(paths: list[Path], root: Path) -> list[Path]:
    """The journal folders named (a run folder, a journal folder, or a folder of runs), or all under `root`."""
    if not paths:
        return find(root) if root.exists() else []
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p} does not exist", "name a run folder under .harness/runs, or no folder for all")
        if (p / PENDING).exists():
            out.append(p)
        elif (p / "journal" / PENDING).exists():
            out.append(p / "journal")
        else:
            out.extend(find(p))
    return sorted(set(out))


def sync(folder: Path, uri: str) -> Synced:
    """Send one journal's records to the server at `uri`, in order; raises if the server does not take them."""
    from mlflow.tracking import MlflowClient

    from harness.tracking.store import uri_key

    file = folder / PENDING
    lines = [ln for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        return Synced(folder, "", 0, 0)
    if record(lines[0], file, 1).get("op") == offline.CREATE:  # recorded without a store (harness gpu-check)
        if not answers(uri):
            raise _away(uri, len(lines), folder)
        created = offline.adopt(folder, MlflowClient(uri))
        lines = [ln for ln in (folder / PENDING).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            return Synced(folder, created or "", 1, 0)
    run_id = record(lines[0], file, 1)["run_id"]
    state = _state(folder.parent)
    if state.get("tracking") and state["tracking"] != uri_key(uri):
        raise ConfigError(
            f"the journal {folder} belongs to a run on another tracking store than {redact_uri(uri)}",
            "pass the tracking URI that run used, with --tracking-uri or MLFLOW_TRACKING_URI",
        )
    if not answers(uri):
        raise _away(uri, len(lines), folder)
    journal = Journal(folder, run_id, uri)
    journal.replay(MlflowClient(uri), retry_in=0)
    left = journal.count()
    if left:
        raise TrackingError(
            f"the tracking server {redact_uri(uri)} went away again; {left} of {len(lines)} records stay in {folder}",
            "run harness sync again when it answers",
        )
    return Synced(folder, run_id, len(lines), 0)


def _away(uri: str, records: int, folder: Path) -> TrackingError:
    return TrackingError(
        f"the tracking server {redact_uri(uri)} does not answer; {records} records stay in {folder}",
        "start it (make server), then run harness sync again",
    )


def _state(run_folder: Path) -> dict:
    try:
        return json.loads((run_folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def sync_all(paths: list[Path], uri: str, root: Optional[Path] = None) -> list[Synced]:
    return [sync(f, uri) for f in journals(paths, root or Path(".harness"))]
