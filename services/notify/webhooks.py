"""Where group-bot webhooks may go: an operator's allowlist of hosts, public addresses only.

A webhook URL is typed by whoever manages a contact, and the server POSTs to it; without
limits that is server-side request forgery (the cloud metadata service, the broker's
management API, any internal host). So:

- the host must be on the allowlist (`NOTIFY_WEBHOOK_HOSTS`, a list or a comma-separated
  string; default the WeCom and DingTalk bot hosts; `*.example.cn` allows subdomains);
- https only, unless `NOTIFY_WEBHOOK_ALLOW_HTTP` is true;
- the addresses it resolves to must be public: private, loopback, link-local, multicast,
  reserved and unspecified addresses are refused unless `NOTIFY_WEBHOOK_ALLOW_PRIVATE` is
  true (the tests' loopback bots);
- checked when a contact is stored (422 naming `webhook_url`) and again at delivery, on the
  address actually connected to (DNS may have changed since, or answer differently to a
  second lookup), and redirects are not followed.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

DEFAULT_HOSTS = ("qyapi.weixin.qq.com", "oapi.dingtalk.com")


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class WebhookPolicy:
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    allow_http: bool = False
    allow_private: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "WebhookPolicy":
        raw = config.get("NOTIFY_WEBHOOK_HOSTS")
        if raw is None or raw == "":
            hosts = DEFAULT_HOSTS
        elif isinstance(raw, str):
            hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
        else:
            hosts = tuple(str(h).strip().lower() for h in raw if str(h).strip())
        return cls(hosts=hosts, allow_http=_flag(config.get("NOTIFY_WEBHOOK_ALLOW_HTTP", False)),
                   allow_private=_flag(config.get("NOTIFY_WEBHOOK_ALLOW_PRIVATE", False)))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".").strip("[]")
        for allowed in (h.lower().strip("[]") for h in self.hosts):
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]) and host != allowed[2:]:
                    return True
            elif host == allowed:
                return True
        return False

    def address_problem(self, address: str) -> str | None:
        """Why the server may not connect to this address, or None."""
        if self.allow_private:
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or not ip.is_global):
            return f"{ip} is a private, loopback, link-local, multicast or reserved address"
        return None

    def url_problem(self, url: str, resolve: bool = True) -> str | None:
        """Why a webhook may not go to `url`, or None. With `resolve`, also every address the
        host resolves to now (a host that does not resolve now is checked at delivery)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        scheme, host = parts.scheme.lower(), (parts.hostname or "")
        if scheme not in ("https", "http") or (scheme == "http" and not self.allow_http):
            return "must be an https:// URL"
        if not host:
            return "has no host"
        if parts.username or parts.password:
            return "may not carry a user name or password"
        if not self.host_allowed(host):
            return (f"host {host} is not on the operator's allowlist of bot hosts "
                    f"(NOTIFY_WEBHOOK_HOSTS: {', '.join(self.hosts) or 'none'})")
        if not resolve or self.allow_private:
            return None
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            return self.address_problem(str(literal))
        try:
            infos = socket.getaddrinfo(host, port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return None  # not resolvable now: the connection is checked at delivery
        for info in infos:
            problem = self.address_problem(info[4][0])
            if problem:
                return f"host {host} resolves to {problem}"
        return None


def _guarded_classes(policy: WebhookPolicy):
    def new_conn(base):
        def _new_conn(self):
            sock = base._new_conn(self)
            try:
                peer = sock.getpeername()[0]
            except OSError as exc:
                sock.close()
                raise NewConnectionError(self, f"cannot tell the peer's address: {exc}") from exc
            problem = policy.address_problem(peer)
            if problem:
                sock.close()
                raise NewConnectionError(self, f"webhook refused: {problem}")
            return sock
        return _new_conn

    http_conn = type("GuardedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn(HTTPConnection)})
    https_conn = type("GuardedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn(HTTPSConnection)})
    http_pool = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
    return http_pool, https_pool


class GuardedAdapter(HTTPAdapter):
    """Checks the address of every connection it opens against the policy."""

    def __init__(self, policy: WebhookPolicy, **kwargs):
        self.policy = policy
        self._pools = _guarded_classes(policy)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": self._pools[0], "https": self._pools[1]}


def guarded_session(policy: WebhookPolicy) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: the connected address is the bot's
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
