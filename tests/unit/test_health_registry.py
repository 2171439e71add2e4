"""/health reads the engines of the services running in this process; a container that has
stopped or died must drop out even when its provider never unregistered."""
from types import SimpleNamespace

from eventlet.event import Event

from services.plumbing import db


def provider(service_name: str, started: bool = True, died: bool = False):
    died_event = Event()
    if died:
        died_event.send(None)
    container = SimpleNamespace(service_name=service_name, started=started, _died=died_event)
    engine = db.make_engine("sqlite://")
    return SimpleNamespace(container=container, engine=engine)


def test_only_running_containers_are_checked(monkeypatch):
    running, stopped, dead = provider("inspection"), provider("probe", started=False), provider("tasks", died=True)
    monkeypatch.setattr(db, "_PROVIDERS", {1: running, 2: stopped, 3: dead})
    assert db.running_engines() == {"inspection": running.engine}


def test_a_provider_that_stops_unregisters(monkeypatch):
    monkeypatch.setattr(db, "_PROVIDERS", {})
    database = db.Database()
    database.container = SimpleNamespace(service_name="inspection", started=True, _died=Event())
    database.engine = db.make_engine("sqlite://")
    db._PROVIDERS[id(database)] = database
    assert db.running_engines() == {"inspection": database.engine}
    database.stop()
    assert db.running_engines() == {}


def test_a_provider_whose_container_is_gone_is_dropped(monkeypatch):
    """A container whose start failed after its database was set up is collected without
    stop(); nameko binds extensions to a weak proxy of it, which then raises ReferenceError."""
    import gc
    import weakref

    class Container:
        service_name, started, _died = "probe", True, Event()

    gone = Container()
    orphan = SimpleNamespace(container=weakref.proxy(gone), engine=db.make_engine("sqlite://"))
    del gone
    gc.collect()
    running = provider("inspection")
    monkeypatch.setattr(db, "_PROVIDERS", {1: orphan, 2: running})
    assert db.running_engines() == {"inspection": running.engine}
    assert list(db._PROVIDERS) == [2]


def test_a_provider_waiting_for_its_database_gives_up_once_stopped(monkeypatch):
    """A container stopped while its database is still unreachable at start (its runner shut
    down, its database dropped) must not leave a loop retrying in the process for ever."""
    import pytest
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(db.time, "sleep", lambda s: None)
    database = db.Database()
    database.container = SimpleNamespace(service_name="probe", started=False, _died=Event())
    attempts = []

    def unreachable():
        attempts.append(1)
        if len(attempts) == 3:
            database.stop()  # as the runner does from another green thread
        raise OperationalError("SELECT 1", {}, Exception('database "gone" does not exist'))

    with pytest.raises(RuntimeError, match="probe stopped while waiting for its database"):
        database._until_reachable(unreachable)
    assert len(attempts) == 3
