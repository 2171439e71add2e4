"""Where photo bytes live. One interface, `PhotoStore`; the stack's disk by default.

Objects are named by the photo's sha256: `<sha256>` (the photo as uploaded),
`<sha256>.thumb.jpg` (the thumbnail) and `<sha256>.json` (what was learnt at upload: type,
size, capture time and place, who uploaded it). Content-addressed names make every write
idempotent, so two instances storing the same photo at once cannot corrupt it.

An S3-compatible object store (MinIO, OSS, COS, OBS…) fits the same interface: implement
`put`/`get` with the bucket's PUT/GET object calls and select it with PHOTOS_STORE=s3 (see
`open_store`); the disk store is the one shipped and tested.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"bad object name {name!r}")
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


def open_store(config: dict) -> PhotoStore:
    kind = str(config.get("PHOTOS_STORE", "disk")).lower()
    if kind == "disk":
        return DiskPhotoStore(config.get("PHOTOS_DIR") or os.environ.get("PHOTOS_DIR") or "var/photos")
    raise ValueError(f"PHOTOS_STORE={kind!r} is not available in this build: use 'disk' "
                     "(an S3-compatible store implements services.photos.storage.PhotoStore)")
