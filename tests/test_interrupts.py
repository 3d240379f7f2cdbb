"""Ctrl-C and SIGTERM never cut a tracking write in half (harness/interrupts.py).

A signal that lands inside an MLflow write on a SQLite store can leave the interrupted connection holding the
store's lock: every later write (closing the run as KILLED, tagging the study's trial) then waits out SQLite's busy
timeout and fails with "database is locked" — seen once in CI when a study was stopped by SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from sqlalchemy import event

from harness import interrupts


def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_during_a_write_waits_for_the_write_to_return():
    done = []
    with interrupts.interrupts_between_writes():
        with pytest.raises(KeyboardInterrupt):
            with interrupts.shield():
                _signal_self()
                done.append("after the signal")
            done.append("after the write")  # never reached: the held signal is raised as the write returns
        assert interrupts.terminated
    assert done == ["after the signal"]


def test_a_second_signal_during_the_same_write_stops_at_once():
    done = []
    with interrupts.interrupts_between_writes():
        with pytest.raises(KeyboardInterrupt):
            with interrupts.shield():
                _signal_self()
                done.append("held")
                _signal_self()  # a write that hangs can still be stopped
                done.append("never")
    assert done == ["held"]


def test_outside_a_write_a_signal_stops_at_once_and_ctrl_c_is_not_sigterm():
    with interrupts.interrupts_between_writes():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        assert not interrupts.terminated
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handlers are back


@pytest.mark.parametrize("where", ["after_cursor_execute", "commit"])
def test_an_interrupt_at_any_point_of_a_write_keeps_the_store_unlocked(tmp_path, where):
    """Signal the process at each point of a real MLflow write (each SQL statement, each commit): the shielded
    client finishes the write, then raises; the store is never left locked for the next writer."""
    db = tmp_path / "mlruns.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("interrupts")
    shielded = interrupts.ShieldedClient(client)
    engine = client._tracking_client.store.engine
    point, seen = [0], [0]

    def fire(*args: object, **kwargs: object) -> None:
        seen[0] += 1
        if seen[0] == point[0]:
            _signal_self()

    event.listen(engine, where, fire)
    points = 0
    for n in range(1, 30):
        run = client.create_run(exp).info.run_id
        point[0], seen[0] = n, 0
        with interrupts.interrupts_between_writes():
            try:
                shielded.log_batch(run, tags=[RunTag("k", str(n))])
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
        if not interrupted:  # past the write's last statement: every point was tried
            break
        points += 1
        other = sqlite3.connect(db, timeout=1)
        try:
            kept = other.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = 'k'", (run,)).fetchall()
            assert kept == [(str(n),)], f"interrupt at {where} #{n}: the write was lost"
            other.execute("INSERT INTO tags (key, value, run_uuid) VALUES ('next', 'x', ?)", (run,))
            other.commit()  # "database is locked" here if the interrupted connection kept its lock
        finally:
            other.close()
    event.remove(engine, where, fire)
    assert points >= 1


def test_a_store_locked_mid_run_is_one_line_not_a_traceback():
    """What MLflow raises when the store stays locked past SQLite's wait (its own message, verbatim)."""
    from mlflow.exceptions import MlflowException

    from harness.errors import user_error

    err = user_error(MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: INSERT INTO tags]"))
    assert err is not None and err.exit_code != 0
    assert err.message.startswith("the tracking store (an SQLite file) stayed locked by another process")
    assert "make server" in err.message
    assert user_error(MlflowException("RESOURCE_DOES_NOT_EXIST: run 'x' not found")) is None  # not every MLflow error
