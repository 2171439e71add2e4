"""The console's relay secret without a setting (issue 27, finding 9, on the README's defaults):
the stack makes one on disk at its first start, so its console and accounts share it and every
person's sign-in is counted by the person's own address."""
from __future__ import annotations

import stat

from services.plumbing.rate_limit import relay_secret


def test_unset_the_secret_is_made_once_on_disk_and_shared(tmp_path):
    config = {"CONSOLE_RELAY_SECRET": "", "CONSOLE_RELAY_SECRET_FILE": str(tmp_path / "var" / "relay.secret")}
    first = relay_secret(config)
    assert first and len(first) >= 32
    assert relay_secret(dict(config)) == first  # the other service of the stack reads the same
    assert stat.S_IMODE((tmp_path / "var" / "relay.secret").stat().st_mode) == 0o600


def test_the_setting_wins_and_an_unwritable_place_gives_none(tmp_path):
    assert relay_secret({"CONSOLE_RELAY_SECRET": "from-the-operator"}) == "from-the-operator"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert relay_secret({"CONSOLE_RELAY_SECRET_FILE": str(blocker / "relay.secret")}) is None
