"""Which paths the console's /api relay passes (issue 27: /api/accounts/%2e/auth/refresh)."""
import pytest

from services.console.operations import RelayRefused, relay_path


@pytest.mark.parametrize("rest", ["me", "inspections/abc", "photos/3f2a", "users/wangfang/grants/viewer/411502008000"])
def test_clean_paths_pass(rest):
    assert relay_path("accounts", rest) == "/" + rest


@pytest.mark.parametrize("rest,status", [
    ("auth/refresh", 404), ("Auth/refresh", 404), (".well-known/jwks.json", 404), ("./auth/refresh", 400),
    ("x/../auth/refresh", 400), ("/auth/refresh", 400), ("%2e/auth/refresh", 400), ("x\\..\\auth", 400),
    ("me/", 400), ("a//b", 400), ("..", 400)])
def test_unclean_or_blocked_paths_are_refused(rest, status):
    with pytest.raises(RelayRefused) as refused:
        relay_path("accounts", rest)
    assert refused.value.status == status


def test_an_unknown_service_is_refused():
    with pytest.raises(RelayRefused) as refused:
        relay_path("nowhere", "x")
    assert refused.value.status == 404 and refused.value.field == "service"
