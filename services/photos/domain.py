"""Photo evidence (现场照片), pure: what an uploaded file really is, what it says about
itself, and its thumbnail. No nameko, no storage.

The type is decided by decoding the content (Pillow), never by the name or the declared
Content-Type: a file that does not decode as one of the accepted formats is refused, as is
one that is too large in bytes or in pixels (a decompression bomb is small on the wire).
The photo's name is the sha256 of its bytes, so the same photo uploaded twice is one photo
and a reference to it cannot be swapped for another picture.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from PIL import Image, ImageOps, UnidentifiedImageError

from services.contracts.errors import RuleViolation

ACCEPTED = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
DEFAULT_MAX_BYTES = 15 * 1024 * 1024
# 16 megapixels (4608×3456, a phone's full-resolution photo; 4000×4000) decode in about half a
# second; a 7000×7000 WebP of 87 KB took seconds (issue 27). Refused from the header, before
# any pixel is decoded; what is accepted is decoded in a worker process within DECODE_SECONDS.
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_DECODE_SECONDS = 5.0
THUMBNAIL_EDGE = 320
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A phone's EXIF time has no zone unless OffsetTimeOriginal says so; the campaign's phones
# are set to China Standard Time.
CAMPAIGN_ZONE = timezone(timedelta(hours=8))

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _DATETIME = 36867, 36881, 306


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_seconds: float = DEFAULT_DECODE_SECONDS


@dataclass
class PhotoFacts:
    sha256: str
    content_type: str
    size: int
    width: int
    height: int
    taken_at: datetime | None = None
    gps: dict | None = None


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(sha256: str, field_name: str = "sha256") -> str:
    if not SHA256.match(sha256 or ""):
        raise RuleViolation(field_name, "must be the photo's sha256: 64 lowercase hex digits (照片编号须为64位十六进制)")
    return sha256


def header(data: bytes, limits: Limits = Limits()) -> tuple[str, int, int]:
    """(format, width, height) from the file's header alone — Pillow's `Image.open` reads no
    pixel — refusing, before anything is decoded, what is not a photo, too many bytes or too
    many pixels. Cheap enough to run in the service itself."""
    if not data:
        raise RuleViolation("body", "照片内容为空，请上传照片文件 (the request body is empty: send the photo's bytes)")
    if len(data) > limits.max_bytes:
        raise RuleViolation("body", f"照片过大：{len(data)}字节，上限{limits.max_bytes}字节 "
                                    f"(the photo is {len(data)} bytes; at most {limits.max_bytes} are accepted)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format
            width, height = probe.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(exc) from exc
    if kind not in ACCEPTED:
        raise RuleViolation("body", f"仅支持 JPEG/PNG/WebP 照片 (a {kind or 'unknown'} image is not accepted; "
                                    f"send JPEG, PNG or WebP)")
    if width * height > limits.max_pixels:
        raise RuleViolation("body", f"照片像素过多：{width}×{height}，上限{limits.max_pixels}像素，请缩小后上传 "
                                    f"({width}×{height} pixels exceeds the limit of {limits.max_pixels})")
    return kind, width, height


def _unreadable(exc: BaseException) -> RuleViolation:
    return RuleViolation("body", f"文件不是有效的照片 (the content is not a readable JPEG, PNG or WebP image: "
                                 f"{exc.__class__.__name__})")


def examine(data: bytes, limits: Limits = Limits()) -> PhotoFacts:
    """What the bytes are; raises RuleViolation(field "body") naming why they are refused.
    Decodes every pixel: run it in a worker process (`decode`), not in a service."""
    kind, width, height = header(data, limits)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated file fails here, not when someone opens it later
            exif = image.getexif()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(exc) from exc
    return PhotoFacts(sha256=sha256_of(data), content_type=ACCEPTED[kind], size=len(data), width=width,
                      height=height, taken_at=capture_time(exif), gps=capture_place(exif))


def decode(data: bytes, limits: Limits = Limits()) -> tuple[PhotoFacts, bytes]:
    """(facts, thumbnail): everything that decodes pixels, in one trip to a worker process
    (`services.plumbing.offload`)."""
    facts = examine(data, limits)
    try:
        return facts, thumbnail(data)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(exc) from exc


def capture_time(exif) -> datetime | None:
    """When the photo was taken, from EXIF DateTimeOriginal (and its offset when present)."""
    if not exif:
        return None
    details = exif.get_ifd(_EXIF_IFD) or {}
    raw = details.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.strptime(raw.strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    zone = CAMPAIGN_ZONE
    offset = details.get(_OFFSET_ORIGINAL)
    if isinstance(offset, str):
        match = re.fullmatch(r"([+-])(\d{2}):(\d{2})", offset.strip("\x00 "))
        if match:
            sign = 1 if match.group(1) == "+" else -1
            zone = timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    if not 2000 <= moment.year <= 2099:
        return None  # an unset phone clock (1970, 2080s resets) says nothing about the visit
    return moment.replace(tzinfo=zone)


def _degrees(value, ref) -> float | None:
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    result = d + m / 60 + s / 3600
    return -result if str(ref).strip("\x00 ").upper() in ("S", "W") else result


def capture_place(exif) -> dict | None:
    """Where the photo was taken, from the EXIF GPS block, as {"lat", "lng"} (WGS-84 as the
    phone recorded it), or None."""
    if not exif:
        return None
    gps = exif.get_ifd(_GPS_IFD) or {}
    if 2 not in gps or 4 not in gps:
        return None
    lat, lng = _degrees(gps.get(2), gps.get(1, "N")), _degrees(gps.get(4), gps.get(3, "E"))
    if lat is None or lng is None or not (-90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return {"lat": round(lat, 7), "lng": round(lng, 7)}


def thumbnail(data: bytes, edge: int = THUMBNAIL_EDGE) -> bytes:
    """A JPEG at most `edge` pixels on its long side, turned upright as the phone meant it."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        upright.thumbnail((edge, edge))
        if upright.mode not in ("RGB", "L"):
            background = Image.new("RGB", upright.size, "white")
            rgba = upright.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            upright = background
        out = io.BytesIO()
        upright.save(out, "JPEG", quality=80)  # no EXIF copied: a thumbnail carries no location
        return out.getvalue()


def referenced(sha256: str, document) -> bool:
    """Whether an inspection or task document (as its service returned it to the caller)
    refers to the photo: any `sha256` field anywhere in it."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("sha256") == sha256:
                return True
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False
