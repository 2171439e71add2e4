"""The two-person rule's check of a second approver (contracts.identity.require_second_approver)
on principals made from token claims as accounts issues them (issue 27, finding 1)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.errors import PermissionDenied
from services.contracts.identity import API_TOKEN_METHOD, GrantOrigin, require_second_approver
from services.plumbing.auth import access_claims, principal_from_claims, provenance_claim

STREET = "411502008000"
PROPOSED = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
BEFORE = PROPOSED - timedelta(days=30)


def approver(*, amr=("pwd",), created_at=BEFORE, created_by="operator", granted_at=BEFORE, granted_by="operator",
             kind="user", subject="zhao", owner=None):
    claims = access_claims(subject, "赵敏", [{"role": "administrator", "node": STREET}], kind=kind)
    if amr is not None:
        claims["amr"] = list(amr)
    if created_at is not None:
        claims["prov"] = provenance_claim(created_at, created_by,
                                          [GrantOrigin("administrator", STREET, granted_at, granted_by)])
    if owner:
        claims.update(owner=owner, owner_name="李强")
    return principal_from_claims(claims)


def refusal(principal) -> str | None:
    try:
        require_second_approver(principal, "411502008001", "li", PROPOSED)
    except PermissionDenied as exc:
        assert exc.field == "approval_id"
        return str(exc)
    return None


def test_another_person_signed_in_with_an_older_independent_account_and_grant_may_approve():
    assert refusal(approver()) is None
    assert refusal(approver(created_by=None, granted_by=None)) is None  # the create-admin command


@pytest.mark.parametrize("who,why", [
    (dict(amr=None), "no amr: not known to be interactive"),
    (dict(amr=(API_TOKEN_METHOD,)), "an exchanged API token"),
    (dict(kind="machine", subject="token:1", owner="li", amr=(API_TOKEN_METHOD,)), "the proposer's own token"),
    (dict(subject="li"), "the proposer itself"),
    (dict(created_at=None), "no provenance"),
    (dict(created_by="li", created_at=PROPOSED - timedelta(days=6)), "an account the proposer created that week"),
    (dict(created_at=PROPOSED + timedelta(seconds=1)), "an account younger than the proposal"),
    (dict(granted_by="li", granted_at=PROPOSED - timedelta(days=6)), "a grant the proposer made that week"),
    (dict(granted_at=PROPOSED + timedelta(minutes=1)), "a grant younger than the proposal"),
])
def test_refused(who, why):
    assert refusal(approver(**who)) is not None, why


def test_a_token_names_the_person_who_owns_it():
    machine = approver(kind="machine", subject="token:abc", owner="li", amr=(API_TOKEN_METHOD,), created_at=None)
    assert machine.person == "li" and not machine.interactive
    assert machine.label == "李强 (li; API 令牌「赵敏」token:abc)"
    assert approver().person == "zhao" and approver().interactive


def test_colleagues_the_first_administrator_set_up_more_than_a_week_before_may_approve_its_proposals():
    """An office's first administrator creates every other account: once they have settled in
    (INDEPENDENCE_WINDOW, 7 days), they can approve its proposals; a puppet made for the
    occasion cannot."""
    settled = approver(created_by="li", created_at=PROPOSED - timedelta(days=8),
                       granted_by="li", granted_at=PROPOSED - timedelta(days=8))
    assert refusal(settled) is None
    fresh_grant = approver(created_by="li", created_at=PROPOSED - timedelta(days=30),
                           granted_by="li", granted_at=PROPOSED - timedelta(days=1))
    assert "7" in refusal(fresh_grant)
