"""Checking the photos a write cites as evidence, for every service that takes them.

An inspection's findings and a task's actions cite photos by sha256. A cited photo must be
in the photo store and be the caller's to see: uploaded by the caller, or already shown on
the same inspection or task. Otherwise one community's rectifier could cite another's photo
(or a sha256 never uploaded) as its own fix, and the photo store would then serve it under
that task. The photos service decides, asked with the caller's own token
(`GET /photos/<sha256>/meta?task_id=…|inspection_id=…`, 404 when not the caller's to cite),
so no rule is copied here.

Config: EVIDENCE_CHECK (default true) — false only for a test stack without the photos
service; a production stack always checks.
"""
from __future__ import annotations

from typing import Iterable

from nameko.extensions import DependencyProvider

from services.contracts.errors import RuleViolation
from services.plumbing.auth import Authenticator
from services.plumbing.upstream import Upstreams, UpstreamUnavailable


def _enabled(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return value is None or bool(value)


class CitedPhotos:
    """Asks the photos service whether the caller may cite each photo."""

    def __init__(self, upstreams: Upstreams, enabled: bool = True):
        self.upstreams = upstreams
        self.enabled = enabled

    def require(self, request, cited: Iterable[tuple[str, str]], *, task_id: str | None = None,
                inspection_id: str | None = None) -> None:
        """`cited`: (field, sha256) pairs, e.g. ("evidence[0].sha256", "9f2c…"). RuleViolation naming
        the field of the first photo the caller may not cite (not uploaded by it, not shown on
        this task or inspection, or never uploaded at all). Each photo is asked about once."""
        if not self.enabled:
            return
        token = Authenticator.token_of(request)
        params = {k: v for k, v in (("task_id", task_id), ("inspection_id", inspection_id)) if v}
        seen: dict[str, bool] = {}
        for field, sha in cited:
            if sha not in seen:
                response = self.upstreams.call("photos", "GET", f"/photos/{sha}/meta", token, params=params)
                if response.status >= 500 or response.status == 401:
                    raise UpstreamUnavailable("photos", f"HTTP {response.status}")
                seen[sha] = response.ok
            if not seen[sha]:
                raise RuleViolation(field, "照片不存在或无权引用：须是本人上传的照片，或本任务/本次检查中已有的照片; "
                                           "the photo was never uploaded, or is not the caller's to cite (upload it "
                                           "yourself, or cite one already shown on this task or inspection)")


def cited(field: str, evidence: Iterable) -> list[tuple[str, str]]:
    """(field, sha256) for each photo of an evidence list: `field[i].sha256`."""
    return [(f"{field}[{i}].sha256", item["sha256"] if isinstance(item, dict) else item.sha256)
            for i, item in enumerate(evidence)]


class PhotoEvidence(DependencyProvider):
    """A service's `CitedPhotos` (one per container)."""

    def setup(self):
        config = self.container.config
        self.checker = CitedPhotos(Upstreams(config), _enabled(config.get("EVIDENCE_CHECK", True)))

    def get_dependency(self, worker_ctx):
        return self.checker
