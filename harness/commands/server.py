"""`harness server start|stop|status|url` (`make server`, `make server-stop`): a team stack on this machine.

- PostgreSQL from the Debian package, as a cluster of its own in a project folder (`.server/pg`, run by the
  `postgres` user when started as root), listening on 127.0.0.1 only, with a generated password kept in
  `.server/pg.secret` (mode 600, git-ignored), and two databases: `mlflow` and `optuna`;
- `mlflow server` over it (`postgresql+psycopg://...`), its schema upgraded once before it starts, artifacts proxied
  to a local folder (`.server/artifacts`; `--artifacts-destination s3://...` works the same with MinIO/S3), bound to
  127.0.0.1; optionally with MLflow's basic-auth app and a generated admin password (`--auth`).

`PG_URL=postgresql://...` uses an existing PostgreSQL instead of starting one; `MLFLOW_TRACKING_URI=http://...`
an existing MLflow server. Passwords are never put on a command line (they travel in the environment or in files)
and never printed: `harness server url mlflow|optuna` prints a URL for scripts (`export OPTUNA_STORAGE=$(harness
server url optuna)`), the only place it appears.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness.config import redact_uri
from harness.errors import ConfigError, RunFailed

FOLDER = Path(".server")
USER = "harness"
DATABASES = ("mlflow", "optuna")


@dataclass
class Stack:
    folder: Path
    mlflow_port: int
    pg_port: Optional[int]
    pg_url: str  # postgresql://harness:<password>@127.0.0.1:<port>  (no database)
    auth: bool = False

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def database(self, name: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.pg_url.split('://', 1)[1]}/{name}"

    @property
    def password(self) -> str:
        return urllib.parse.urlsplit(self.pg_url).password or ""


def _state_file(folder: Path) -> Path:
    return folder / "stack.json"


def _secret(folder: Path, name: str) -> str:
    """A generated password, created once, readable by its owner only."""
    path = folder / f"{name}.secret"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port a stopped server left in TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or (
        [shutil.which(name)] if shutil.which(name) else []
    )
    if not found:
        raise ConfigError(
            "PostgreSQL is not installed here",
            "install it (Debian/Ubuntu: apt-get install postgresql), or give an existing server as "
            "PG_URL=postgresql://user:password@host:port",
        )
    return found[-1]


def _as_postgres(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def _fail(what: str, proc: subprocess.CompletedProcess, secret: str = "") -> RunFailed:
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()
    line = tail[-1] if tail else f"exit code {proc.returncode}"
    return RunFailed(
        f"{what} failed: {line.replace(secret, '***') if secret else line}",
        "see the logs in the stack's folder (.server/ by default)",
    )


def _postgres_can_enter(path: Path) -> bool:
    """Whether PostgreSQL's user can reach `path` (as root it is the `postgres` user; otherwise it is us)."""
    if os.geteuid() != 0:
        return True
    return _as_postgres(["test", "-x", str(path)]).returncode == 0


def cluster_dir(folder: Path) -> Path:
    """The project's cluster: `<folder>/pg`, or, when PostgreSQL's user cannot enter that folder (a checkout under
    root's 0700 home, a `mktemp -d` folder), a folder of its own under /var/lib/harness (HARNESS_PG_ROOT) named after
    the stack folder's path. The choice is kept in `<folder>/pg.location`, so stop and status find it."""
    marker = folder / "pg.location"
    if marker.exists():
        return Path(marker.read_text().strip())
    data = (folder / "pg").resolve()
    if _postgres_can_enter(folder.resolve()):
        return data
    given = os.environ.get("HARNESS_PG_ROOT")
    root = Path(given or "/var/lib/harness")
    home = root / f"pg-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]}"
    home.mkdir(parents=True, exist_ok=True)
    if not given:
        os.chmod(root, 0o755)  # ours: the postgres user passes through it to its own folder
    subprocess.run(["chown", "postgres", str(home)], check=True)
    os.chmod(home, 0o700)
    if not _postgres_can_enter(home):
        raise ConfigError(
            f"PostgreSQL's user cannot enter {folder.resolve()} (a folder above it is closed to other users, such as "
            f"a home folder with mode 700), nor {home}",
            "run make server from a folder other users can enter, or set HARNESS_PG_ROOT to a folder postgres can",
        )
    marker.write_text(str(home / "pg"))
    return home / "pg"


def _pg_running(data: Path) -> Optional[int]:
    """The port of the project's cluster if its postmaster is alive (postmaster.pid: pid on line 1, port on 4)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return port


def start_postgres(folder: Path, port: int) -> str:
    """The project's own cluster (initialised once), started on 127.0.0.1; returns its URL (with the password)."""
    password = _secret(folder, "pg")
    data = cluster_dir(folder)
    home = data.parent  # the stack folder, or the cluster's own folder when postgres cannot enter that one
    if os.geteuid() == 0:
        subprocess.run(["chown", "postgres", str(home)], check=True)
    if not (data / "PG_VERSION").exists():
        pwfile = home / "pg.pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres", str(pwfile)], check=True)
        try:
            proc = _as_postgres(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile.resolve()}",
                    "-E",
                    "UTF8",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise _fail("initdb", proc, password)
    log = (home / "pg.log").resolve()
    if os.geteuid() == 0 and log.exists():
        subprocess.run(["chown", "postgres", str(log)], check=True)
    proc = _as_postgres(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {data} -c max_connections=200",
            "start",
        ],
        timeout=90,
    )
    if proc.returncode != 0 and "another server might be running" not in (proc.stderr + proc.stdout):
        raise _fail("starting PostgreSQL", proc, password)
    url = f"postgresql://{USER}:{password}@127.0.0.1:{port}"
    _create_databases(url)
    return url


def _create_databases(url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg{url[len('postgresql') :]}/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as con:
            have = {r[0] for r in con.execute(sqlalchemy.text("SELECT datname FROM pg_database"))}
            for name in DATABASES:
                if name not in have:
                    con.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.SQLAlchemyError as e:  # refused, wrong password, gone: one line, the password masked
        lines = str(getattr(e, "orig", e) or e).strip().splitlines()
        first = lines[0][:200] if lines else type(e).__name__
        raise RunFailed(
            f"PostgreSQL at {redact_uri(url)} does not take connections ({first})",
            "see its log (.server/pg.log, or the folder pg.location names); make server-stop, then make server, "
            "starts it again",
        ) from None
    finally:
        engine.dispose()


def start_mlflow(stack: Stack, workers: int = 2) -> None:
    """Upgrade the schema once, then serve it on 127.0.0.1 (the store URL travels in the environment)."""
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    backend = stack.database("mlflow")
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend}
    # `mlflow db upgrade` takes the URL as an argument, which any local user reads in `ps`: the URL goes without its
    # password, and libpq takes the password from the environment (PGPASSWORD), readable by this user only
    bare = backend.replace(f":{stack.password}@", "@", 1) if stack.password else backend
    upgrade = subprocess.run(
        [mlflow, "db", "upgrade", bare],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PGPASSWORD": urllib.parse.unquote(stack.password)},
    )
    if upgrade.returncode != 0:
        raise _fail("mlflow db upgrade", upgrade, stack.password)
    cmd = [
        mlflow,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(stack.mlflow_port),
        "--workers",
        str(workers),
        "--artifacts-destination",
        str((stack.folder / "artifacts").resolve()),
    ]
    if stack.auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_config(stack.folder))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _secret(stack.folder, "flask")  # CSRF protection needs a static key
        cmd += ["--app-name", "basic-auth"]
    log = open(stack.folder / "mlflow.log", "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    (stack.folder / "mlflow.pid").write_text(str(proc.pid))
    _wait_for(f"{stack.tracking_uri}/health", proc, 120, stack.folder / "mlflow.log")


def _auth_config(folder: Path) -> Path:
    """MLflow's basic-auth app with an admin password of our own (never the documented default)."""
    db = folder / "auth.db"  # its users and password hashes: readable by the owner only, as the other secrets
    os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(db, 0o600)
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{(folder / 'auth.db').resolve()}\n"
        f"admin_username = admin\nadmin_password = {_secret(folder, 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    os.chmod(path, 0o600)
    return path


def _wait_for(url: str, proc: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RunFailed(f"the MLflow server did not come up at {url}", f"see {log.resolve()}") from None
            time.sleep(0.5)


def start(folder: Path = FOLDER, mlflow_port: int = 5000, pg_port: int = 5433, auth: bool = False) -> Stack:
    """Start what is not running, reuse what is: a cluster left running (its MLflow server died) keeps its port,
    and a server process that no longer answers is stopped before a new one starts."""
    folder.mkdir(parents=True, exist_ok=True)
    running = status(folder)
    if running is not None:
        return running
    pg_url = os.environ.get("PG_URL")
    port = None
    if not pg_url:
        port = _pg_running(cluster_dir(folder))
        if port is None:
            port = _free_port(pg_port)
            pg_url = start_postgres(folder, port)
        else:
            pg_url = f"postgresql://{USER}:{_secret(folder, 'pg')}@127.0.0.1:{port}"
            _create_databases(pg_url)
    else:
        _create_databases(pg_url.rstrip("/"))
    _stop_mlflow(folder)  # a server process that no longer answers
    stack = Stack(folder, _free_port(mlflow_port), port, pg_url.rstrip("/"), auth)
    start_mlflow(stack)
    _state_file(folder).write_text(
        json.dumps({"mlflow_port": stack.mlflow_port, "pg_port": port, "auth": auth, "external_pg": port is None})
    )
    return stack


def status(folder: Path = FOLDER) -> Optional[Stack]:
    """The running stack of this folder, if its MLflow server answers."""
    path = _state_file(folder)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    stack = Stack(folder, info["mlflow_port"], info["pg_port"], _pg_url(folder, info), info.get("auth", False))
    try:
        with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=2):
            return stack
    except OSError:
        return None


def _pg_url(folder: Path, info: dict) -> str:
    if info.get("external_pg"):
        return os.environ.get("PG_URL", "").rstrip("/")
    return f"postgresql://{USER}:{_secret(folder, 'pg')}@127.0.0.1:{info['pg_port']}"


def _mlflow_pid(folder: Path) -> Optional[int]:
    """The MLflow server process this folder started, if it is alive."""
    try:
        pid = int((folder / "mlflow.pid").read_text())
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # a child of this process that died is reaped, not counted as alive
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _stop_mlflow(folder: Path) -> bool:
    pid = _mlflow_pid(folder)
    (folder / "mlflow.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (else it lingers as a zombie)
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def stop(folder: Path = FOLDER) -> list[str]:
    """Stop whatever part of the stack is running: the MLflow server (by its pid file) and the project's cluster."""
    stopped = []
    if _stop_mlflow(folder):
        stopped.append("mlflow server")
    data = cluster_dir(folder) if folder.exists() else folder / "pg"
    if (data / "postmaster.pid").exists():
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(data.resolve()), "-m", "fast", "-w", "stop"], timeout=60)
        stopped.append("postgresql")
    _state_file(folder).unlink(missing_ok=True)
    return stopped


def parts(folder: Path = FOLDER) -> dict[str, str]:
    """Each part of this folder's stack as it is now, in words (`harness server status`)."""
    info = json.loads(_state_file(folder).read_text()) if _state_file(folder).exists() else {}
    out = {}
    stack = status(folder)
    pid = _mlflow_pid(folder)
    if stack is not None:
        out["mlflow server"] = f"answering at {stack.tracking_uri}"
    elif pid is not None:
        out["mlflow server"] = f"process {pid} is alive but does not answer on port {info.get('mlflow_port', '?')}"
    else:
        out["mlflow server"] = "not running"
    if info.get("external_pg"):
        out["postgresql"] = "an existing server (PG_URL)"
    else:
        data = cluster_dir(folder) if folder.exists() else folder / "pg"
        port = _pg_running(data)
        where = f"cluster {data}"
        out["postgresql"] = f"running on 127.0.0.1:{port} ({where})" if port else f"not running ({where})"
    return out


def describe(stack: Stack) -> str:
    lines = [
        f"MLflow server   {stack.tracking_uri}   (export MLFLOW_TRACKING_URI={stack.tracking_uri})",
        f"  backend store {redact_uri(stack.database('mlflow', 'postgresql'))}, artifacts "
        f"{(stack.folder / 'artifacts').resolve()} (proxied)",
        f"Optuna storage  {redact_uri(stack.database('optuna', 'postgresql'))}   "
        "(export OPTUNA_STORAGE=$(harness server url optuna))",
    ]
    if stack.auth:
        lines.append(
            f"basic auth: user admin, password in {(stack.folder / 'admin.secret').resolve()} "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    lines.append("stop it: make server-stop (or harness server stop)")
    return "\n".join(lines)
