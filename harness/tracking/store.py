"""Can the tracking store be used? Checked in a few seconds before anything is trained, so a wrong or unreachable
store is one line naming it (password masked) and the cause, not minutes of retries and chained tracebacks.

- `http(s)://` (an MLflow server): its `/health` answers, and its REST API accepts the credentials (in the URI or in
  MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD);
- `sqlite:///<file>`: the folder exists and can be written; an existing file is an SQLite database that can be read
  and written (a corrupt or read-only file is left untouched);
- other SQLAlchemy URLs (`postgresql://`, `mysql://`, ...): the database driver is installed and a connection opens.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from harness.config import redact_uri
from harness.errors import LOCKED_FIX, TrackingError


def uri_key(uri: str) -> str:
    """The tracking URI as the state file stores it: a hash, so no credential lands on disk."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


TIMEOUT_S = 5.0
BUSY_S = 45.0  # a server that accepts the connection but answers slowly (busy with other workers) is waited for
FIX = "point MLFLOW_TRACKING_URI (or tracking.tracking_uri) at a store that works; sqlite:///mlruns.db needs no server"
_SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(uri: str, timeout: float = TIMEOUT_S, busy: float = BUSY_S) -> None:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        _check_server(uri, timeout, busy)
    elif scheme.split("+")[0] == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        raise TrackingError(
            f"tracking store {redact_uri(uri)} is a plain folder, which MLflow 3 no longer accepts",
            "use a database file instead, e.g. sqlite:///mlruns.db",
        )
    elif scheme not in ("databricks", "databricks-uc", "uc"):
        _check_database(uri, timeout)


def _mask(text: str, uri: str) -> str:
    """`text` without the URI's password (a library's message may quote the URI it was given)."""
    password = urllib.parse.urlsplit(uri).password if "://" in uri else None
    text = text.replace(uri, redact_uri(uri))
    return text.replace(password, "***") if password else text


def _fail(uri: str, cause: str, fix: str = FIX) -> TrackingError:
    return TrackingError(f"cannot use the tracking store {redact_uri(uri)}: {_mask(cause, uri)}", fix)


def _check_server(uri: str, timeout: float, busy: float = BUSY_S) -> None:
    """A refused or unresolvable address fails at once; a server that is there but slow to answer (eight tuning
    workers logging through two server processes) is asked again until `busy` seconds have passed."""
    parts = urllib.parse.urlsplit(uri)
    base = urllib.parse.urlunsplit(
        (parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path.rstrip("/"), "", "")
    )
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    headers = {}
    if user:
        token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}".encode())
        headers["Authorization"] = "Basic " + token.decode()
    started = time.monotonic()
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        while True:
            try:
                _ask(base + path, headers, timeout, uri)
                break
            except TimeoutError:
                waited = time.monotonic() - started
                if waited + timeout <= busy:
                    continue
                raise _fail(
                    uri,
                    f"the server did not answer {path.split('?')[0]} (asked for {waited:.0f} s)",
                    "check that it is not stuck or overloaded (its log; more workers: mlflow server --workers N), "
                    "or " + FIX,
                ) from None


def _ask(url: str, headers: dict[str, str], timeout: float, uri: str) -> None:
    """One request; TimeoutError when the server did not answer in `timeout` seconds."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise _fail(
                uri,
                f"the server refused the credentials (HTTP {e.code})",
                "check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or the user in the URI)",
            ) from None
        path = urllib.parse.urlsplit(url).path
        if not (path.endswith("/health") and e.code == 404):  # an old server without /health still answers the API
            raise _fail(uri, f"the server answered {path} with HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
            raise TimeoutError from None
        raise _fail(
            uri,
            f"the server is not reachable ({reason})",
            "start it (mlflow server ..., or make server), or " + FIX,
        ) from None


def _sqlite_path(uri: str) -> Path | None:
    rest = uri.split("://", 1)[1]
    if rest in ("", "/", "/:memory:") or ":memory:" in rest:
        return None
    return Path(rest[1:] if rest.startswith("/") else rest).expanduser()


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise _fail(uri, f"the folder {folder} does not exist", f"create {folder}, or " + FIX)
    if not path.exists():
        if not os.access(folder, os.W_OK):
            raise _fail(uri, f"the folder {folder} is read-only, so the database file cannot be created")
        return
    if not os.access(path, os.R_OK | os.W_OK):
        raise _fail(uri, f"{path} is read-only (runs cannot be recorded)", f"make {path} writable, or " + FIX)
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_HEADER))
    if head and head != _SQLITE_HEADER:
        raise _fail(
            uri,
            f"{path} is not an SQLite database (damaged, or another kind of file)",
            "restore it from a backup, or point the store at another file; it was left as it is",
        )
    try:  # read-only: a damaged file is never written to
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT_S)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" not in str(e):
            raise _fail(uri, f"{path} cannot be read ({e})") from None
        raise _fail(uri, f"{path} is locked by another process (waited {TIMEOUT_S:g} s)", LOCKED_FIX) from None
    except sqlite3.DatabaseError as e:
        raise _fail(
            uri,
            f"{path} cannot be read as an SQLite database ({e})",
            "restore it from a backup, or point the store at another file; it was left as it is",
        ) from None


def _check_database(uri: str, timeout: float) -> None:
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
        engine = sqlalchemy.create_engine(
            url, connect_args={"connect_timeout": int(timeout)} if dialect.name in ("postgresql", "mysql") else {}
        )
    except ImportError as e:
        raise _fail(
            uri,
            f"its database driver is not installed ({e})",
            "install the driver for this URL (postgresql: pip install 'psycopg[binary]', which make setup "
            "installs; mysql: pip install pymysql and write mysql+pymysql://), or " + FIX,
        ) from None
    except Exception as e:  # sqlalchemy.exc.ArgumentError / NoSuchModuleError: not a URL it knows
        raise _fail(uri, f"not a tracking URI MLflow can use ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    try:
        with engine.connect():
            pass
    except Exception as e:  # sqlalchemy.exc.OperationalError and friends
        first = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise _fail(uri, f"cannot connect to the database ({type(e).__name__}: {first[0] if first else ''})") from None
    finally:
        engine.dispose()
