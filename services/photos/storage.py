"""Where photo bytes live. One interface, `PhotoStore`; the stack's disk by default, or an
S3-compatible object store (MinIO, 阿里云 OSS, 腾讯云 COS, 华为云 OBS, AWS S3) when configured.

Objects are named by the photo's sha256: `<sha256>` (the photo as uploaded),
`<sha256>.thumb.jpg` (the thumbnail) and `<sha256>.json` (what was learnt at upload: type,
size, capture time and place, who uploaded it). Content-addressed names make every write
idempotent, so two instances storing the same photo at once cannot corrupt it. A put
replaces the object whole (disk: a temporary file renamed into place; S3: one PUT, which a
reader sees entirely or not at all), so a reader never sees half an object.

Selected by PHOTOS_STORE (`open_store`):
  disk  PHOTOS_DIR (default var/photos)
  s3    PHOTOS_S3_BUCKET (required), PHOTOS_S3_ENDPOINT (the store's URL, e.g.
        http://minio.office.lan:9000 or https://oss-cn-hangzhou.aliyuncs.com; default AWS),
        PHOTOS_S3_REGION, PHOTOS_S3_PREFIX (key prefix, e.g. 411502008000/photos/),
        PHOTOS_S3_ACCESS_KEY / PHOTOS_S3_SECRET_KEY (else the standard AWS_* variables and
        files), PHOTOS_S3_PATH_STYLE (true for MinIO and other stores without per-bucket
        host names), PHOTOS_S3_CONNECT_TIMEOUT / PHOTOS_S3_READ_TIMEOUT (s) and
        PHOTOS_S3_MAX_ATTEMPTS (tries of one call, the first included).
Each setting is read from the service config, then from the environment variable of the
same name. A store that cannot be reached is an outage (503 with Retry-After, like a
database outage), not an error: see `services.plumbing.db.register_outage`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from services.plumbing.db import register_outage

log = logging.getLogger(__name__)


def check_object_name(name: str) -> str:
    """Object names are flat: no directory, nothing hidden. (The service only ever makes
    names from a checked sha256; this is the store's own guard.)"""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"bad object name {name!r}")
    return name


class PhotoStore:
    """Content-addressed blobs: put is idempotent, get answers None for a missing object."""

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, name: str) -> bytes | None:
        raise NotImplementedError

    def put_json(self, name: str, document: dict) -> None:
        self.put(name, json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8"))

    def get_json(self, name: str) -> dict | None:
        data = self.get(name)
        return None if data is None else json.loads(data.decode("utf-8"))


class DiskPhotoStore(PhotoStore):
    """Files under `root`, fanned out by the first two hex digits (no directory of a million files).
    Writes go to a temporary file in the same directory and are renamed into place, so a
    reader never sees half a photo."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        check_object_name(name)
        return self.root / name[:2] / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None


class ObjectStoreUnavailable(Exception):
    """The object store answered, but only that it cannot serve now (a 5xx after the
    client's retries: MinIO still starting, SlowDown, an OSS/COS gateway error)."""


class ObjectStoreMisconfigured(ValueError):
    """The settings cannot work (no bucket, an unknown bucket, refused credentials): raised
    at startup, naming the setting to fix."""


def _s3_outage_errors() -> tuple:
    from botocore import exceptions as boto_errors
    # EndpointConnectionError, ConnectTimeoutError and ProxyConnectionError are ConnectionErrors;
    # ReadTimeoutError and ConnectionClosedError are HTTPClientErrors (the socket, not an answer).
    return (boto_errors.ConnectionError, boto_errors.HTTPClientError, ObjectStoreUnavailable)


register_outage("object store", ObjectStoreUnavailable)


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".jpg"):
        return "image/jpeg"
    return "application/octet-stream"  # the photo as uploaded: its type is in its .json


class S3PhotoStore(PhotoStore):
    """Objects `<prefix><name>` in one bucket of an S3-compatible store, through boto3.

    Every call is bounded: connect and read timeouts, and a few retries with backoff
    (botocore's standard mode) before the failure is reported as an outage. Only the
    checksum headers every S3-compatible store understands are sent (Content-MD5; not the
    CRC32 trailers newer botocore sends by default, which OSS, COS, OBS and older MinIO
    refuse)."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str | None = None,
                 prefix: str = "", access_key: str | None = None, secret_key: str | None = None,
                 path_style: bool = False, connect_timeout: float = 3.0, read_timeout: float = 10.0,
                 max_attempts: int = 3):
        import boto3
        from botocore.config import Config

        register_outage("object store", *_s3_outage_errors())
        if not bucket:
            raise ObjectStoreMisconfigured("PHOTOS_S3_BUCKET is required with PHOTOS_STORE=s3: "
                                           "the bucket that holds the photos")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix and prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or None
        config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"total_max_attempts": max(1, int(max_attempts)), "mode": "standard"},
                        s3={"addressing_style": "path" if path_style else "auto"},
                        signature_version="s3v4",
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=region or "us-east-1",
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None, config=config)

    def __repr__(self) -> str:
        return f"S3PhotoStore(s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS'})"

    def _key(self, name: str) -> str:
        return self.prefix + check_object_name(name)

    @staticmethod
    def _code_and_status(exc) -> tuple[str, int]:
        error = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if hasattr(exc, "response") else 0
        return str(error.get("Code", "")), int(status or 0)

    def _raise(self, exc, what: str):
        code, status = self._code_and_status(exc)
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
            raise ObjectStoreUnavailable(f"{what}: the object store answered {status} {code}") from exc
        raise exc

    def put(self, name: str, data: bytes) -> None:
        from botocore.exceptions import ClientError
        key = self._key(name)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5,
                                   ContentType=_content_type(name))
        except ClientError as exc:
            self._raise(exc, f"storing {key}")

    def get(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError
        key = self._key(name)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code, status = self._code_and_status(exc)
            # A missing bucket is also a 404, but a misconfiguration, not a missing photo.
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                return None
            self._raise(exc, f"reading {key}")
        with response["Body"] as body:
            return body.read()

    def check(self) -> None:
        """At startup: a bucket that does not exist or credentials the store refuses fail
        here, naming the setting to fix. A store that cannot be reached now is only logged:
        the service starts and answers 503 until the store is back."""
        from botocore.exceptions import ClientError, NoCredentialsError
        probe = self.prefix + ".chuangwei-startup-check"
        try:
            self.client.get_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError as exc:
            raise ObjectStoreMisconfigured(
                "no credentials for the object store: set PHOTOS_S3_ACCESS_KEY and PHOTOS_S3_SECRET_KEY "
                "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from exc
        except ClientError as exc:
            code, status = self._code_and_status(exc)
            if code == "NoSuchBucket":
                raise ObjectStoreMisconfigured(
                    f"PHOTOS_S3_BUCKET={self.bucket!r}: no such bucket at {self.endpoint_url or 'AWS S3'} "
                    "(create it, or fix PHOTOS_S3_BUCKET / PHOTOS_S3_ENDPOINT)") from exc
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"):
                raise ObjectStoreMisconfigured(
                    f"the object store refused the credentials ({code}): check PHOTOS_S3_ACCESS_KEY and "
                    "PHOTOS_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from exc
            if code in ("NoSuchKey", "404") or status == 404:
                return
            # AccessDenied: a key allowed only to get and put objects may not learn that one
            # is missing; a 5xx: the store is not ready yet. Neither stops the service.
            log.warning("photo store %r: startup check answered %s %s; starting anyway", self, status, code)
        except _s3_outage_errors() as exc:
            log.warning("photo store %r unreachable at startup (%s); starting anyway, uploads answer 503 "
                        "until it is back", self, exc)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _setting(config: dict, name: str, *env_fallbacks: str) -> str | None:
    """The service config's value, else the environment variable of the same name, else the
    first of `env_fallbacks` set (AWS_*). Empty counts as unset (${VAR:} in nameko.yaml)."""
    value = config.get(name)
    if value not in (None, ""):
        return value if isinstance(value, (bool, int, float)) else str(value)
    for variable in (name, *env_fallbacks):
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def _flag(config: dict, name: str) -> bool:
    value = _setting(config, name)
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ObjectStoreMisconfigured(f"{name}={value!r}: expected true or false")


def _number(config: dict, name: str, default: float) -> float:
    value = _setting(config, name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number <= 0:
        raise ObjectStoreMisconfigured(f"{name}={value!r}: expected a positive number")
    return number


def s3_store_from_config(config: dict) -> S3PhotoStore:
    access_key = _setting(config, "PHOTOS_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    secret_key = _setting(config, "PHOTOS_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
    if bool(access_key) != bool(secret_key):
        raise ObjectStoreMisconfigured("PHOTOS_S3_ACCESS_KEY and PHOTOS_S3_SECRET_KEY go together: "
                                       f"only {'PHOTOS_S3_ACCESS_KEY' if access_key else 'PHOTOS_S3_SECRET_KEY'} is set")
    endpoint = _setting(config, "PHOTOS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint and not str(endpoint).startswith(("http://", "https://")):
        raise ObjectStoreMisconfigured(f"PHOTOS_S3_ENDPOINT={endpoint!r}: expected a URL, "
                                       "http://host:port or https://host")
    return S3PhotoStore(
        bucket=_setting(config, "PHOTOS_S3_BUCKET") or "",
        endpoint_url=endpoint,
        region=_setting(config, "PHOTOS_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        prefix=_setting(config, "PHOTOS_S3_PREFIX") or "",
        access_key=access_key, secret_key=secret_key,
        path_style=_flag(config, "PHOTOS_S3_PATH_STYLE"),
        connect_timeout=_number(config, "PHOTOS_S3_CONNECT_TIMEOUT", 3.0),
        read_timeout=_number(config, "PHOTOS_S3_READ_TIMEOUT", 10.0),
        max_attempts=int(_number(config, "PHOTOS_S3_MAX_ATTEMPTS", 3)))


def open_store(config: dict) -> PhotoStore:
    """The store PHOTOS_STORE names; a misconfiguration raises ValueError naming the setting.
    (Makes no network call: `S3PhotoStore.check` does, at the service's startup.)"""
    kind = str(_setting(config, "PHOTOS_STORE") or "disk").lower()
    if kind == "disk":
        return DiskPhotoStore(config.get("PHOTOS_DIR") or os.environ.get("PHOTOS_DIR") or "var/photos")
    if kind == "s3":
        return s3_store_from_config(config)
    raise ObjectStoreMisconfigured(f"PHOTOS_STORE={kind!r}: expected disk or s3")
