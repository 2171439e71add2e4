"""The photo stores' contract, run alike against the disk store and the S3 store (against
moto's S3-compatible HTTP server in a subprocess: real requests over real sockets), and
what is particular to the S3 store: its settings, its startup check, and an unreachable or
failing store reported as an outage (503), within bounded time."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.photos.storage import (DiskPhotoStore, ObjectStoreMisconfigured, ObjectStoreUnavailable,
                                     S3PhotoStore, open_store)
from services.plumbing.db import unavailable_dependency
from tests import support

SHA = "ab" + "0" * 62
OTHER = "cd" + "1" * 62


@pytest.fixture(scope="module")
def moto():
    with support.MotoS3Server() as server:
        yield server


@pytest.fixture
def bucket(moto):
    return moto.create_bucket()


@pytest.fixture(params=["disk", "s3"])
def make_store(request, tmp_path):
    """make_store(prefix) → a store; stores made with different prefixes share the bucket (or
    the disk's parent directory) but not their objects."""
    if request.param == "disk":
        return lambda prefix="": DiskPhotoStore(tmp_path / (prefix.strip("/") or "root"))
    moto = request.getfixturevalue("moto")
    bucket = moto.create_bucket()
    return lambda prefix="": open_store(moto.store_config(bucket, PHOTOS_S3_PREFIX=prefix))


def test_a_put_object_comes_back_byte_for_byte(make_store):
    store = make_store()
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    store.put(SHA, data)
    assert store.get(SHA) == data
    store.put(SHA + ".thumb.jpg", b"\xff\xd8thumb")
    assert store.get(SHA + ".thumb.jpg") == b"\xff\xd8thumb"
    assert store.get(SHA) == data


def test_a_missing_object_is_none(make_store):
    store = make_store()
    assert store.get(SHA) is None
    assert store.get_json(SHA + ".json") is None
    store.put(OTHER, b"x")
    assert store.get(SHA) is None


def test_json_documents_round_trip_as_utf8(make_store):
    store = make_store()
    document = {"名称": "周家山路公厕", "size": 12, "gps": {"lat": 32.1234, "lng": 114.0567}, "taken_at": None}
    store.put_json(SHA + ".json", document)
    assert store.get_json(SHA + ".json") == document
    assert store.get(SHA + ".json") == json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")


def test_a_put_of_an_existing_name_replaces_it_whole(make_store):
    store = make_store()
    store.put(SHA, b"one")
    store.put(SHA, b"one")  # the same photo again: harmless
    assert store.get(SHA) == b"one"
    store.put_json(SHA + ".json", {"uploaded_by": ["a"]})
    store.put_json(SHA + ".json", {"uploaded_by": ["a", "b"]})  # the document is rewritten
    assert store.get_json(SHA + ".json") == {"uploaded_by": ["a", "b"]}
    store.put(OTHER, b"longer content")
    store.put(OTHER, b"short")
    assert store.get(OTHER) == b"short"


def test_stores_under_different_prefixes_do_not_see_each_other(make_store):
    first, second = make_store("411502008000/photos/"), make_store("411502003000/photos")
    first.put(SHA, b"first")
    assert second.get(SHA) is None
    second.put(SHA, b"second")
    assert first.get(SHA) == b"first" and second.get(SHA) == b"second"


def test_names_with_paths_are_refused(make_store):
    store = make_store()
    for bad in ("../etc/passwd", ".hidden", "a/b", "a\\b", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")
        with pytest.raises(ValueError):
            store.get(bad)


# --- the S3 store's own ---

def test_objects_are_keyed_under_the_prefix_with_their_type(moto, bucket):
    store = open_store(moto.store_config(bucket, PHOTOS_S3_PREFIX="/411502008000/photos"))
    assert isinstance(store, S3PhotoStore) and store.prefix == "411502008000/photos/"
    store.put(SHA, b"photo")
    store.put(SHA + ".thumb.jpg", b"thumb")
    store.put_json(SHA + ".json", {})
    client = moto.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"411502008000/photos/{SHA}", f"411502008000/photos/{SHA}.json",
                    f"411502008000/photos/{SHA}.thumb.jpg"]
    assert client.head_object(Bucket=bucket, Key=f"411502008000/photos/{SHA}.json")["ContentType"] == "application/json"
    assert client.head_object(Bucket=bucket, Key=f"411502008000/photos/{SHA}.thumb.jpg")["ContentType"] == "image/jpeg"


def test_settings_are_checked_before_any_request_naming_the_setting(moto, monkeypatch):
    for variable in ("PHOTOS_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PHOTOS_S3_ACCESS_KEY",
                     "PHOTOS_S3_SECRET_KEY", "PHOTOS_S3_PATH_STYLE"):
        monkeypatch.delenv(variable, raising=False)
    cases = [
        ({"PHOTOS_S3_BUCKET": ""}, "PHOTOS_S3_BUCKET is required"),
        ({"PHOTOS_S3_SECRET_KEY": ""}, "only PHOTOS_S3_ACCESS_KEY is set"),
        ({"PHOTOS_S3_ENDPOINT": "minio.lan:9000"}, "PHOTOS_S3_ENDPOINT='minio.lan:9000': expected a URL"),
        ({"PHOTOS_S3_PATH_STYLE": "sometimes"}, "PHOTOS_S3_PATH_STYLE='sometimes'"),
        ({"PHOTOS_S3_READ_TIMEOUT": "0"}, "PHOTOS_S3_READ_TIMEOUT='0'"),
        ({"PHOTOS_STORE": "ftp"}, "PHOTOS_STORE='ftp': expected disk or s3"),
    ]
    for override, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            open_store(moto.store_config("some-bucket", **override))


def test_settings_come_from_the_environment_and_the_standard_aws_variables(moto, bucket, monkeypatch):
    monkeypatch.setenv("PHOTOS_STORE", "s3")
    monkeypatch.setenv("PHOTOS_S3_BUCKET", bucket)
    monkeypatch.setenv("PHOTOS_S3_ENDPOINT", moto.url)
    monkeypatch.setenv("PHOTOS_S3_PATH_STYLE", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "cn-north-1")
    store = open_store({"PHOTOS_S3_PREFIX": ""})  # ${PHOTOS_S3_PREFIX:} from nameko.yaml: unset
    assert isinstance(store, S3PhotoStore) and store.bucket == bucket
    assert store.client.meta.region_name == "cn-north-1"
    store.put(SHA, b"from the environment")
    assert moto.client().get_object(Bucket=bucket, Key=SHA)["Body"].read() == b"from the environment"
    # The config wins over the environment.
    assert open_store({"PHOTOS_STORE": "disk", "PHOTOS_DIR": "/tmp/x"}).__class__ is DiskPhotoStore


def test_the_startup_check_fails_for_a_bucket_that_does_not_exist(moto, bucket):
    open_store(moto.store_config(bucket)).check()
    with pytest.raises(ObjectStoreMisconfigured, match="PHOTOS_S3_BUCKET='no-such-bucket': no such bucket"):
        open_store(moto.store_config("no-such-bucket")).check()


def test_an_unreachable_store_is_an_outage_not_an_error():
    port = support.free_port()  # nothing listens there
    store = open_store({"PHOTOS_STORE": "s3", "PHOTOS_S3_ENDPOINT": f"http://127.0.0.1:{port}",
                        "PHOTOS_S3_BUCKET": "photos", "PHOTOS_S3_ACCESS_KEY": "a", "PHOTOS_S3_SECRET_KEY": "b"})
    store.check()  # logged, not raised: the service starts and answers 503 until the store is back
    from botocore.exceptions import EndpointConnectionError
    for call in (lambda: store.put(SHA, b"x"), lambda: store.get(SHA)):
        with pytest.raises(EndpointConnectionError, match=f"127.0.0.1:{port}") as caught:
            call()
        assert unavailable_dependency(caught.value) == "object store"


class _Misbehaving(BaseHTTPRequestHandler):
    """503 SlowDown to every request, or (path /hang/...) no answer at all until released."""
    requests = 0
    released = threading.Event()

    def _answer(self):
        type(self).requests += 1
        if self.path.startswith("/hang"):
            type(self).released.wait(60)
            return
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def do_PUT(self):  # the body first
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, *args):
        pass


@pytest.fixture
def misbehaving_store_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Misbehaving.requests = 0
    _Misbehaving.released.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Misbehaving.released.set()
        server.shutdown()
        server.server_close()


def test_a_store_answering_5xx_is_retried_a_bounded_number_of_times_then_an_outage(misbehaving_store_url):
    store = open_store({"PHOTOS_STORE": "s3", "PHOTOS_S3_ENDPOINT": misbehaving_store_url, "PHOTOS_S3_PATH_STYLE": True,
                        "PHOTOS_S3_BUCKET": "photos", "PHOTOS_S3_ACCESS_KEY": "a", "PHOTOS_S3_SECRET_KEY": "b",
                        "PHOTOS_S3_MAX_ATTEMPTS": 2})
    with pytest.raises(ObjectStoreUnavailable, match="503 SlowDown") as caught:
        store.put(SHA, b"x")
    assert unavailable_dependency(caught.value) == "object store"
    assert _Misbehaving.requests == 2
    with pytest.raises(ObjectStoreUnavailable):
        store.get(SHA)


def test_a_store_that_does_not_answer_times_out_as_an_outage(misbehaving_store_url):
    store = open_store({"PHOTOS_STORE": "s3", "PHOTOS_S3_ENDPOINT": misbehaving_store_url, "PHOTOS_S3_PATH_STYLE": True,
                        "PHOTOS_S3_BUCKET": "hang", "PHOTOS_S3_ACCESS_KEY": "a", "PHOTOS_S3_SECRET_KEY": "b",
                        "PHOTOS_S3_READ_TIMEOUT": 0.5, "PHOTOS_S3_MAX_ATTEMPTS": 2})
    from botocore.exceptions import ReadTimeoutError
    # The server answers nothing until the test ends: only the client's own read timeout
    # (not a stopwatch) can end the call, and it does so on every attempt.
    with pytest.raises(ReadTimeoutError) as caught:
        store.get(SHA)
    assert unavailable_dependency(caught.value) == "object store"
    assert _Misbehaving.requests == 2
