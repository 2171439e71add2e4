"""Photo use cases: store an upload, serve a photo to those who may see where it is shown.

Who may see a photo is decided by the service that shows it: the caller names the
inspection or task, and that service is asked, with the caller's own token, for that
inspection or task. Only if it answers, and its document refers to the photo by sha256,
is the photo served. So a 暗访's photos stay with the inspecting office until release,
exactly as the inspection does, and no rule is copied here to drift apart.
"""
from __future__ import annotations

from datetime import datetime

from services.contracts.errors import RuleViolation, UnknownReference
from services.contracts.identity import Principal
from services.photos import domain
from services.photos.schemas import PhotoOut, PhotoQuery
from services.photos.storage import PhotoStore
from services.plumbing import offload
from services.plumbing.upstream import Upstreams

THUMBNAIL_SUFFIX = ".thumb.jpg"


def photo_out(meta: dict) -> PhotoOut:
    sha = meta["sha256"]
    return PhotoOut(sha256=sha, uri=f"photos/{sha}", thumbnail_uri=f"photos/{sha}/thumbnail",
                    content_type=meta["content_type"], size=meta["size"], width=meta["width"],
                    height=meta["height"], taken_at=meta.get("taken_at"), gps=meta.get("gps"),
                    uploaded_at=meta["uploaded_at"])


def store_photo(store: PhotoStore, data: bytes, limits: domain.Limits, principal: Principal,
                now: datetime) -> tuple[bool, PhotoOut]:
    """(created, photo): the same bytes again are the same photo (created False); the new
    uploader is remembered so that they may see what they sent.

    The header is checked here (type, bytes, pixels: nothing decoded); the pixels are decoded
    in a worker process (`offload`), so that a costly photo holds no other request of the
    service, and one decoding longer than `limits.decode_seconds` is abandoned (422)."""
    domain.header(data, limits)
    sha256 = domain.sha256_of(data)
    meta = store.get_json(sha256 + ".json")
    created = meta is None
    if created:
        facts, thumb = decode(data, limits)
        store.put(facts.sha256, data)
        store.put(facts.sha256 + THUMBNAIL_SUFFIX, thumb)
        meta = {"sha256": facts.sha256, "content_type": facts.content_type, "size": facts.size,
                "width": facts.width, "height": facts.height,
                "taken_at": facts.taken_at.isoformat() if facts.taken_at else None, "gps": facts.gps,
                "uploaded_at": now.isoformat(), "uploaded_by": [principal.subject]}
        store.put_json(facts.sha256 + ".json", meta)  # last: its presence means the photo is complete
    elif principal.subject not in meta.get("uploaded_by", []):
        meta["uploaded_by"] = [*meta.get("uploaded_by", []), principal.subject]
        store.put_json(facts.sha256 + ".json", meta)
    return created, photo_out(meta)


def decode(data: bytes, limits: domain.Limits) -> tuple[domain.PhotoFacts, bytes]:
    try:
        return offload.run(domain.decode, data, limits, timeout=limits.decode_seconds)
    except offload.TooSlow:
        raise RuleViolation("body", f"照片解码超时（超过{limits.decode_seconds:g}秒），已放弃处理，请缩小后重新上传 "
                                    f"(decoding the photo took longer than {limits.decode_seconds:g} s)") from None
    except offload.TooLarge:
        raise RuleViolation("body", "照片解码所需内存过多，请缩小后重新上传 (decoding the photo needs too much memory)") \
            from None


def _may_see(meta: dict, query: PhotoQuery, principal: Principal, token: str | None, upstreams: Upstreams) -> bool:
    if principal.subject in meta.get("uploaded_by", []):
        return True
    shown_in = []
    if query.inspection_id:
        shown_in.append(("inspection", f"/inspections/{query.inspection_id}"))
    if query.task_id:
        shown_in.append(("tasks", f"/tasks/{query.task_id}"))
    for service, path in shown_in:
        document = upstreams.get_json(service, path, token)
        if document is not None and domain.referenced(meta["sha256"], document):
            return True
    return False


def _visible_meta(store: PhotoStore, upstreams: Upstreams, sha256: str, query: PhotoQuery, principal: Principal,
                  token: str | None) -> tuple[dict, UnknownReference]:
    domain.check_name(sha256, "photo_id")
    meta = store.get_json(sha256 + ".json")
    # Missing and not yours to see answer alike: a photo's existence is itself evidence.
    hidden = UnknownReference("photo_id", "no such photo that you may see: name the inspection_id or task_id "
                                        "that shows it (照片不存在或无权查看)")
    if meta is None:
        raise hidden
    if not _may_see(meta, query, principal, token, upstreams):
        raise hidden
    return meta, hidden


def photo_meta(store: PhotoStore, upstreams: Upstreams, sha256: str, query: PhotoQuery, principal: Principal,
               token: str | None) -> PhotoOut:
    """What a photo is, only to who may cite it: its uploader, or one who sees the inspection or
    task already showing it (the services taking evidence ask this with the caller's token)."""
    meta, _ = _visible_meta(store, upstreams, sha256, query, principal, token)
    return photo_out(meta)


def read_photo(store: PhotoStore, upstreams: Upstreams, sha256: str, query: PhotoQuery, principal: Principal,
               token: str | None, thumbnail: bool = False) -> tuple[bytes, str, PhotoOut]:
    meta, hidden = _visible_meta(store, upstreams, sha256, query, principal, token)
    if thumbnail:
        data, content_type = store.get(sha256 + THUMBNAIL_SUFFIX), "image/jpeg"
    else:
        data, content_type = store.get(sha256), meta["content_type"]
    if data is None:
        raise hidden
    return data, content_type, photo_out(meta)
