"""Password hashing (argon2id) and the service's settings, without a database."""
from datetime import timedelta

from services.accounts.operations import Passwords, Settings


def test_passwords_are_hashed_with_argon2id_and_verified():
    passwords = Passwords(time_cost=1, memory_cost=1024)
    stored = passwords.hash("周家山路12号公厕整改")
    assert stored.startswith("$argon2id$") and "周家山" not in stored
    assert passwords.hash("周家山路12号公厕整改") != stored  # salted
    assert passwords.verify(stored, "周家山路12号公厕整改")
    assert not passwords.verify(stored, "周家山路12号公厕整改 ")
    assert not passwords.verify("not-a-hash", "anything")
    assert passwords.burn("anything") is False


def test_hashes_made_with_weaker_parameters_are_upgraded():
    weak = Passwords(time_cost=1, memory_cost=1024).hash("金牛山街道2026检查员")
    stronger = Passwords(time_cost=2, memory_cost=2048)
    assert stronger.needs_rehash(weak)
    assert stronger.verify(weak, "金牛山街道2026检查员")  # still accepted until rehashed at sign-in
    assert not stronger.needs_rehash(stronger.hash("金牛山街道2026检查员"))


def test_settings_from_the_stack_config():
    settings = Settings.from_config({"AUTH_ISSUER": "https://id.xinyang.gov.cn", "ACCOUNTS_ACCESS_TTL": 120,
                                     "ACCOUNTS_LOGIN_MAX_FAILURES": "3", "ACCOUNTS_LOGIN_WINDOW_SECONDS": 600,
                                     "ACCOUNTS_SIGNING_KEY_FILE": ""})
    assert settings.issuer == "https://id.xinyang.gov.cn" and settings.audience == "chuangwei"
    assert settings.access_ttl == 120 and settings.refresh_ttl == 12 * 3600
    assert settings.user_limit.limit == 3 and settings.user_limit.window == timedelta(minutes=10)
    assert settings.client_limit.limit == 20 and settings.key_file is None
    defaults = Settings.from_config({})
    assert defaults.access_ttl == 300 and defaults.min_password_length == 10
    assert defaults.user_limit.limit == 5 and defaults.user_limit.window == timedelta(minutes=15)
