"""What an uploaded photo is, decided from its bytes; capture time and place from EXIF;
thumbnails; the disk store."""
from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from services.contracts.errors import RuleViolation
from services.photos import domain
from services.photos.storage import DiskPhotoStore

CST = timezone(timedelta(hours=8))


def jpeg(size=(640, 480), taken: str | None = None, offset: str | None = None, gps: dict | None = None,
         orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (200, 50, 50))
    exif = Image.Exif()
    if taken:
        exif.get_ifd(0x8769)[36867] = taken
    if offset:
        exif.get_ifd(0x8769)[36881] = offset
    if gps:
        exif.get_ifd(0x8825).update(gps)
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def png(size=(10, 10), mode="RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


XINYANG = {1: "N", 2: (32.0, 7.0, 24.24), 3: "E", 4: (114.0, 3.0, 24.12)}


def test_a_phone_photo_keeps_its_capture_time_and_place():
    data = jpeg(taken="2026:11:20 09:31:12", gps=XINYANG)
    facts = domain.examine(data)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert (facts.content_type, facts.size, facts.width, facts.height) == ("image/jpeg", len(data), 640, 480)
    assert facts.taken_at == datetime(2026, 11, 20, 9, 31, 12, tzinfo=CST)
    assert facts.gps == {"lat": 32.1234, "lng": 114.0567}


def test_the_exif_offset_wins_over_the_campaign_zone_and_southern_western_refs_are_negative():
    facts = domain.examine(jpeg(taken="2026:11:20 09:31:12", offset="+00:00",
                                gps={1: "S", 2: (10.0, 30.0, 0.0), 3: "W", 4: (20.0, 15.0, 0.0)}))
    assert facts.taken_at == datetime(2026, 11, 20, 9, 31, 12, tzinfo=timezone.utc)
    assert facts.gps == {"lat": -10.5, "lng": -20.25}


def test_a_photo_without_exif_or_with_a_reset_clock_has_no_capture_time():
    assert domain.examine(jpeg()).taken_at is None and domain.examine(jpeg()).gps is None
    assert domain.examine(jpeg(taken="1970:01:01 00:00:00")).taken_at is None
    assert domain.examine(jpeg(taken="not a date")).taken_at is None


def test_png_and_webp_are_accepted_by_content():
    assert domain.examine(png()).content_type == "image/png"
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "WEBP")
    assert domain.examine(out.getvalue()).content_type == "image/webp"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"<html><script>alert(1)</script></html>", "not a readable"),
    (b"%PDF-1.7\n" + b"0" * 100, "not a readable"),
    (jpeg()[:200], "not a readable"),  # a truncated upload
])
def test_content_that_is_no_accepted_image_is_refused_naming_the_body(data, reason):
    with pytest.raises(RuleViolation) as caught:
        domain.examine(data)
    assert caught.value.field == "body" and reason in caught.value.reason


def test_a_gif_is_refused_even_though_it_is_an_image():
    out = io.BytesIO()
    Image.new("P", (4, 4)).save(out, "GIF")
    with pytest.raises(RuleViolation) as caught:
        domain.examine(out.getvalue())
    assert "a GIF image is not accepted" in caught.value.reason


def test_size_and_pixel_limits():
    data = jpeg()
    with pytest.raises(RuleViolation) as caught:
        domain.examine(data, domain.Limits(max_bytes=len(data) - 1))
    assert f"the photo is {len(data)} bytes; at most {len(data) - 1}" in caught.value.reason
    with pytest.raises(RuleViolation) as caught:
        domain.examine(data, domain.Limits(max_pixels=640 * 480 - 1))
    assert "640×480 pixels exceeds the limit of 307199" in caught.value.reason
    assert domain.examine(data, domain.Limits(max_bytes=len(data), max_pixels=640 * 480)).width == 640


def test_the_thumbnail_is_a_small_upright_jpeg_without_location():
    # Orientation 6: the phone was turned; the thumbnail shows it as the person saw it.
    thumb = domain.thumbnail(jpeg(size=(1200, 600), gps=XINYANG, orientation=6))
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.format == "JPEG" and image.size == (160, 320)
        assert not image.getexif().get_ifd(0x8825)
    with Image.open(io.BytesIO(domain.thumbnail(png(size=(50, 20))))) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (50, 20)


def test_referenced_finds_the_sha256_anywhere_in_a_document():
    sha = "a" * 64
    task = {"evidence": [], "history": [{"evidence": [{"uri": f"photos/{sha}", "sha256": sha}]}]}
    assert domain.referenced(sha, task)
    assert not domain.referenced("b" * 64, task)
    assert not domain.referenced(sha, {"note": sha})  # a mention in text is no reference


def test_names_must_be_sha256():
    assert domain.check_name("0" * 64) == "0" * 64
    for bad in ("0" * 63, "A" * 64, "../" + "0" * 61, ""):
        with pytest.raises(RuleViolation):
            domain.check_name(bad)


def test_the_disk_store_is_content_addressed_and_refuses_path_tricks(tmp_path):
    store = DiskPhotoStore(tmp_path)
    sha = "ab" + "0" * 62
    assert store.get(sha) is None
    store.put(sha, b"one")
    store.put(sha, b"one")  # idempotent
    assert store.get(sha) == b"one"
    assert (tmp_path / "ab" / sha).read_bytes() == b"one"
    store.put_json(sha + ".json", {"名称": "公厕"})
    assert store.get_json(sha + ".json") == {"名称": "公厕"}
    assert [p.name for p in (tmp_path / "ab").iterdir() if p.name.startswith(".")] == []
    for bad in ("../etc/passwd", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


# A lossless WebP of 7,000 × 7,000 white pixels: 38 bytes on the wire, seconds to decode (issue 27).
HUGE_WEBP = bytes.fromhex("524946461e000000574542505650384c110000002f57dbd50607d0fffef7bfff8188e87f0000")


def test_too_many_pixels_are_refused_from_the_header_before_any_pixel_is_decoded():
    import time
    assert domain.DEFAULT_MAX_PIXELS <= 24_000_000
    started = time.perf_counter()
    with pytest.raises(RuleViolation) as caught:
        domain.header(HUGE_WEBP)
    assert time.perf_counter() - started < 0.5
    assert caught.value.field == "body"
    assert caught.value.reason.startswith("照片像素过多：7000×7000，上限16000000像素")
    with pytest.raises(RuleViolation):
        domain.examine(HUGE_WEBP)


def test_decode_gives_the_facts_and_the_thumbnail_in_one_trip():
    facts, thumb = domain.decode(jpeg(gps=XINYANG))
    assert (facts.width, facts.height, facts.gps) == (640, 480, {"lat": 32.1234, "lng": 114.0567})
    assert thumb[:2] == b"\xff\xd8"
