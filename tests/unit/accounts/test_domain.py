"""Pure account rules: usernames, the password policy, who may grant what, API-token grants,
the login rate limit and how secrets are stored."""
from datetime import datetime, timedelta, timezone

import pytest

from services.accounts import domain
from services.plumbing.rate_limit import RateLimit
from services.contracts.errors import RuleViolation
from services.plumbing.auth import Grant

T0 = datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)
CITY = "411500000000"          # 信阳市
DISTRICT = "411502000000"      # 浉河区
STREET = "411502008000"        # 金牛山街道
COMMUNITY = "411502008001"     # 周家山社区
OTHER_STREET = "411502001000"  # 老城街道
OTHER_DISTRICT_COMMUNITY = "411503001001"


# --- usernames ---

@pytest.mark.parametrize("raw,expected", [("ZhangWei", "zhangwei"), ("  wang.fang ", "wang.fang"),
                                          ("ｚｈａｎｇ", "zhang"), ("13800000000", "13800000000"),
                                          ("li_qiang@xinyang", "li_qiang@xinyang")])
def test_usernames_are_normalised(raw, expected):
    assert domain.check_username(raw) == expected


@pytest.mark.parametrize("raw", ["a", "-admin", "张伟", "with space", "x" * 65, "admin;drop", ""])
def test_malformed_usernames_are_refused_naming_the_field(raw):
    with pytest.raises(RuleViolation) as caught:
        domain.check_username(raw)
    assert caught.value.field == "username"


# --- password policy ---

@pytest.mark.parametrize("password", ["周家山路12号公厕整改", "correct horse battery", "Xy7!kq2#Lm9p",
                                      "金牛山街道2026检查员"])
def test_good_passwords_pass(password):
    assert domain.password_problems(password, "wangfang") == []
    domain.check_password(password, "wangfang")  # does not raise


@pytest.mark.parametrize("password,why", [
    ("short1!", "at least 10"),
    ("123456789", "at least 10"),
    ("1234567890", "first ones guessed"),
    ("Password123", "first ones guessed"),
    ("aaaaaaaaaaaa", "four different"),
    ("abababab1111", "four different"),
    ("wangfang2026!", "contain the username"),
    (" leading-space-pw", "whitespace"),
    ("trailing-space-pw ", "whitespace"),
    ("tab\tinside-pw", "control characters"),
    ("x" * 300 + "abcd", "at most 256"),
])
def test_weak_passwords_are_refused_with_the_reason(password, why):
    problems = domain.password_problems(password, "wangfang")
    assert any(why in p for p in problems), problems
    with pytest.raises(RuleViolation) as caught:
        domain.check_password(password, "wangfang", field="new_password")
    assert caught.value.field == "new_password"


def test_minimum_length_is_configurable():
    assert domain.password_problems("Kq7#mZ2p", min_length=8) == []
    assert domain.password_problems("Kq7#mZ2p", min_length=12) != []


def test_a_short_username_inside_a_password_is_not_held_against_it():
    # Two-letter usernames occur in many good passwords by chance.
    assert domain.password_problems("zhou-jia-shan-road", "zh") == []


# --- grants within the administrator's subtree ---

STREET_ADMIN = [Grant("administrator", STREET)]


@pytest.mark.parametrize("node,allowed", [
    (STREET, True), (COMMUNITY, True),                 # its own node and below
    (DISTRICT, False), (CITY, False),                   # above it
    (OTHER_STREET, False), (OTHER_DISTRICT_COMMUNITY, False),  # beside it
])
def test_an_administrator_grants_only_within_its_subtree(node, allowed):
    for role in ("administrator", "inspector", "rectifier", "viewer"):
        outside = domain.grants_outside_administration(STREET_ADMIN, [Grant(role, node)])
        assert (outside == []) is allowed, (role, node)


def test_only_administrator_grants_count_for_granting():
    inspector_everywhere = [Grant("inspector", CITY), Grant("viewer", CITY)]
    assert domain.grants_outside_administration(inspector_everywhere, [Grant("viewer", COMMUNITY)]) == [0]


def test_the_offending_grants_are_named_by_index():
    wanted = [Grant("inspector", COMMUNITY), Grant("viewer", DISTRICT), Grant("rectifier", STREET),
              Grant("viewer", OTHER_STREET)]
    assert domain.grants_outside_administration(STREET_ADMIN, wanted) == [1, 3]


def test_administers_is_subtree_wide():
    assert domain.administers([Grant("administrator", DISTRICT)], COMMUNITY)
    assert not domain.administers([Grant("administrator", COMMUNITY)], STREET)
    assert not domain.administers([Grant("inspector", DISTRICT)], COMMUNITY)


# --- API tokens carry no more than their owner ---

def test_token_grants_must_be_held_by_the_owner_with_the_same_role():
    owner = [Grant("inspector", STREET), Grant("viewer", DISTRICT)]
    assert domain.grants_wider_than(owner, [Grant("inspector", COMMUNITY), Grant("viewer", OTHER_STREET)]) == []
    # A different role, or a node above or beside the owner's, is wider.
    assert domain.grants_wider_than(owner, [Grant("administrator", COMMUNITY)]) == [0]
    assert domain.grants_wider_than(owner, [Grant("inspector", DISTRICT)]) == [0]
    assert domain.grants_wider_than(owner, [Grant("viewer", CITY)]) == [0]


def test_a_token_loses_what_its_owner_loses():
    token = [Grant("inspector", COMMUNITY), Grant("viewer", STREET)]
    assert domain.effective_token_grants(token, [Grant("viewer", DISTRICT)]) == [Grant("viewer", STREET)]
    assert domain.effective_token_grants(token, []) == []
    assert domain.effective_token_grants(token, [Grant("inspector", STREET), Grant("viewer", STREET)]) == token


def test_duplicate_grants_collapse_in_order():
    grants = [Grant("viewer", STREET), Grant("inspector", STREET), Grant("viewer", STREET)]
    assert domain.distinct_grants(grants) == [Grant("viewer", STREET), Grant("inspector", STREET)]


@pytest.mark.parametrize("node,prefix", [(CITY, "4115"), (DISTRICT, "411502"), (STREET, "411502008"),
                                         (COMMUNITY, "411502008001"), ("410000000000", "41"),
                                         ("441900003000", "441900003")])
def test_subtree_prefix(node, prefix):
    assert domain.subtree_prefix(node) == prefix


# --- the rate-limit window ---

LIMIT = RateLimit(5, timedelta(minutes=15))


def test_fewer_failures_than_the_limit_allow_another_attempt():
    failures = [T0 - timedelta(minutes=m) for m in (1, 2, 3, 4)]
    assert LIMIT.retry_after(failures, T0) is None


def test_the_limit_reached_within_the_window_blocks_until_one_ages_out():
    failures = [T0 - timedelta(minutes=m) for m in (1, 2, 3, 4, 10)]
    # The fifth most recent failure (10 minutes ago) leaves the window in 5 minutes.
    assert LIMIT.retry_after(failures, T0) == 300


def test_failures_outside_the_window_do_not_count():
    failures = [T0 - timedelta(minutes=m) for m in (1, 2, 3, 4, 15, 16, 60)]
    assert LIMIT.retry_after(failures, T0) is None


def test_many_failures_block_until_enough_have_aged_out():
    failures = [T0 - timedelta(minutes=m) for m in (1, 2, 3, 4, 5, 6, 14)]
    # Five most recent: 1..5 min ago; the 5-minute-old one ages out in 10 minutes.
    assert LIMIT.retry_after(failures, T0) == 600


def test_retry_after_is_at_least_one_second():
    failures = [T0 - timedelta(minutes=15) + timedelta(milliseconds=100)] * 5
    assert LIMIT.retry_after(failures, T0) == 1


def test_failures_in_the_future_are_ignored():
    # Another instance's clock may run slightly ahead; its rows must not lock anyone out forever.
    failures = [T0 + timedelta(minutes=1)] * 5
    assert LIMIT.retry_after(failures, T0) is None


# --- secrets ---

def test_secrets_are_random_prefixed_and_stored_as_digests():
    a, b = domain.new_secret(domain.API_TOKEN_PREFIX), domain.new_secret(domain.API_TOKEN_PREFIX)
    assert a != b and a.startswith("cwt_") and len(a) >= 40
    assert domain.secret_digest(a) == domain.secret_digest(a) != domain.secret_digest(b)
    assert a not in domain.secret_digest(a) and len(domain.secret_digest(a)) == 64


def test_token_expiry_must_be_future_and_bounded():
    domain.check_token_expiry(T0 + timedelta(days=30), T0, 366)
    for bad in (T0, T0 - timedelta(seconds=1), T0 + timedelta(days=367)):
        with pytest.raises(RuleViolation) as caught:
            domain.check_token_expiry(bad, T0, 366)
        assert caught.value.field == "expires_at"
