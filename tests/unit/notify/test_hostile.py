"""Hostile input to the notify service's pure parts: templates, webhook targets, headers, Markdown."""
from __future__ import annotations


import pytest

from services.notify.channels import SmtpSettings, build_email
from services.notify.domain import NotifyRuleViolation, parse_rule_set
from services.notify.sandbox import markdown_block, markdown_inline, one_line
from services.notify.samples import sample_context
from services.notify.templates import Templates, check_template
from services.notify.webhooks import WebhookPolicy

# Each of these must be refused by the test render, quickly: none may run for long.
HOSTILE_TEMPLATES = {
    "nested loops of 100,000": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops within the range limit": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}"
                                           "{% endfor %}",
    "loop over a built list": "{% for i in range(9999)|list %}{% for j in range(9999)|list %}{% endfor %}"
                              "{% endfor %}",
    "doubling a string": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}{{ ns.s }}",
    "doubling a number": "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
                         "{% endfor %}{{ ns.n }}",
    "huge power": "{{ 10 ** 100000 }}",
    "huge repetition": "{{ 'x' * 1000000000 }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "self-including": "{% include 'urge.md' %}{% include 'urge.md' %}",
    "wide centre": "{{ 'x'|center(1000000000) }}",
    "wide format": "{{ '{:>999999999}'.format(1) }}",
    "percent format": "{{ '%999999999d' % 1 }}",
    "ljust": "{{ 'x'.ljust(999999999) }}",
    "replace blowup": "{{ ('x' * 50000)|replace('', 'y' * 50000) }}",
    "join blowup": "{{ range(10000)|join('y' * 10000) }}",
    "huge output": "{% for i in range(5000) %}{{ 'y' * 90000 }}{% endfor %}",
    "lipsum": "{{ lipsum(1000000) }}",
    "slow filter in a loop": "{% for i in range(9000) %}{{ ('x ' * 4000)|urlize|length }}{% endfor %}",
    "long text to a slow filter": "{{ ('x' * 19000)|wordwrap(1) }}",
    "long text worked on in a loop": "{% set s = 'x' * 190000 %}{% for i in range(9000) %}{{ s.upper()|length }}"
                                     "{% endfor %}",
    "recursive loop": "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
    "mutating a list": "{% set l = [1] %}{{ l.append(2) }}",
    "escaping the sandbox": "{{ task.__class__.__mro__ }}",
    "unknown variable": "{{ nothing.here }}",
    "failing at run time": "{{ 1 / 0 }}",
    "does not parse": "{% if %}",
    "source too long": "x" * 50_001,
}


@pytest.mark.parametrize("source", HOSTILE_TEMPLATES.values(), ids=HOSTILE_TEMPLATES.keys())
def test_a_hostile_template_is_refused_by_the_test_render(source):
    # The sandbox bounds work by counting operations and output, not by a clock, so the
    # refusal is deterministic; a stopwatch here failed under load without proving more.
    with pytest.raises(NotifyRuleViolation) as err:
        check_template("urge.md", source)
    assert err.value.field == "source" and err.value.reason


def test_a_partial_is_tried_in_every_notice_that_includes_it():
    with pytest.raises(NotifyRuleViolation) as err:
        check_template("_task.md", "{{ task.nothing_like_this }}")
    assert "test render" in err.value.reason
    check_template("_task.md", "> 问题：{{ task.item_text }}\n")


def test_every_packaged_template_passes_its_own_test_render():
    for name in ("urge.md", "bulletin.md", "bulletin.html", "inspection.md", "newsletter.md", "_layout.html"):
        check_template(name, Templates().default_source(name))


def test_a_failing_template_falls_back_to_the_default_and_says_why():
    context = sample_context("urge")
    rendered, problem = Templates().render_safely("urge", context, [], {"urge.md": "{{ event.no_such_field }}"})
    assert rendered.title.startswith("督办单") and "no_such_field" in problem
    # A notice routed to an event it was not written for: the default fails too, a minimal notice goes out.
    rendered, problem = Templates().render_safely("urge", {"office": "金牛山街道"}, [], None)
    assert rendered.title == "督办单（金牛山街道）" and "minimal" in problem


def test_values_printed_into_markdown_are_inert():
    hostile = "周家山社区\n# 假标题 [点我](http://evil.example) **粗** <b>x</b> |表| `code` _x_"
    context = dict(sample_context("urge"))
    context["task"] = dict(context["task"], responsible=dict(context["task"]["responsible"], name=hostile))
    rendered = Templates().render("urge", context)
    assert "\n# 假标题" not in rendered.markdown and "[点我](" not in rendered.markdown
    assert "**粗**" not in rendered.markdown and "<b>" not in rendered.markdown and "|表|" not in rendered.markdown
    assert "＃ 假标题 ［点我］(http://evil.example) ＊＊粗＊＊ ＜b＞x＜/b＞ ｜表｜ ｀code｀ ＿x＿" in rendered.markdown
    assert "\n" not in rendered.title and "&lt;b&gt;" in rendered.html  # HTML autoescaped


def test_markdown_helpers():
    assert markdown_inline("a\r\nb*c") == "a b＊c"
    assert markdown_block("第一段\n\n- 列表\n# 标题") == "第一段\n\n\u200b- 列表\n＃ 标题"
    assert one_line("督办\r\nBcc: x@y.cn\x00") == "督办 Bcc: x@y.cn"


def test_no_header_injection_through_a_title():
    msg = build_email(SmtpSettings(), "a@b.cn", "督办单\r\nBcc: victim@example.cn", "text", "<p>html</p>")
    assert msg["Subject"] == "督办单 Bcc: victim@example.cn" and msg["Bcc"] is None
    assert "\nBcc:" not in msg.as_string()


RULE_CONDITIONS = [
    ({"severity": "major"}, "rules.0.when"),
    ({"urge_count_at_least": "two"}, "rules.0.when"),
    ({"vetoed": 1}, "rules.0.when"),
    ({"score_below": True}, "rules.0.when"),
]


@pytest.mark.parametrize("when,field", RULE_CONDITIONS)
def test_a_rule_condition_of_the_wrong_type_is_refused(when, field):
    with pytest.raises(NotifyRuleViolation) as err:
        parse_rule_set({"rules": [{"id": "x", "event": "task_overdue", "notice": "urge", "to": ["responsible"],
                                   "channels": ["inbox"], "when": when}]})
    assert err.value.field == field


STRICT = WebhookPolicy()
WEBHOOKS = [
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=1", None),
    ("https://oapi.dingtalk.com/robot/send?access_token=1", None),
    ("http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=1", "https"),
    ("https://evil.example.cn/hook", "allowlist"),
    ("https://127.0.0.1/hook", "allowlist"),
    ("https://10.0.0.8/hook", "allowlist"),
    ("https://169.254.169.254/latest/meta-data", "allowlist"),
    ("https://user:pw@qyapi.weixin.qq.com/x", "password"),
    ("ftp://qyapi.weixin.qq.com/x", "https"),
]


@pytest.mark.parametrize("url,problem", WEBHOOKS)
def test_webhook_targets_under_the_default_policy(url, problem):
    found = STRICT.url_problem(url, resolve=False)
    assert (found is None) if problem is None else (problem in found)


def test_private_addresses_are_refused_even_when_their_host_is_allowed():
    policy = WebhookPolicy(hosts=("127.0.0.1", "10.0.0.8", "169.254.169.254", "[::1]", "::ffff:127.0.0.1", "8.8.8.8"))
    for url in ("https://127.0.0.1/x", "https://10.0.0.8/x", "https://169.254.169.254/x", "https://[::1]/x",
                "https://[::ffff:127.0.0.1]/x"):
        assert "private" in policy.url_problem(url), url
    assert policy.url_problem("https://8.8.8.8/x") is None
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "224.0.0.1", "0.0.0.0",
                    "::1", "fe80::1", "100.64.0.1"):
        assert policy.address_problem(address), address
    assert WebhookPolicy(hosts=("127.0.0.1",), allow_private=True).url_problem("https://127.0.0.1/x") is None


def test_the_policy_from_config():
    policy = WebhookPolicy.from_config({"NOTIFY_WEBHOOK_HOSTS": "bot.example.cn, *.hooks.example.cn",
                                        "NOTIFY_WEBHOOK_ALLOW_HTTP": "true"})
    assert policy.host_allowed("bot.example.cn") and policy.host_allowed("a.hooks.example.cn")
    assert not policy.host_allowed("hooks.example.cn") and not policy.host_allowed("evil.example.cn")
    assert policy.allow_http and not policy.allow_private
    assert WebhookPolicy.from_config({}).hosts == ("qyapi.weixin.qq.com", "oapi.dingtalk.com")


def test_a_webhook_redirect_is_not_followed_and_an_inside_address_is_refused_at_connect():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from services.notify.channels import DeliveryFailed, send_webhook
    hits = []

    class Bot(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(302 if self.path == "/redirect" else 200)
            self.send_header("Location", "/inside")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Bot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        lab = WebhookPolicy(hosts=("127.0.0.1",), allow_http=True, allow_private=True)
        with pytest.raises(DeliveryFailed, match="HTTP 302"):
            send_webhook(f"{base}/redirect", "wecom", "标题", "正文", timeout=5, policy=lab)
        assert hits == ["/redirect"]  # never /inside
        send_webhook(f"{base}/ok", "wecom", "标题", "正文", timeout=5, policy=lab)
        # The host is allowed but the address connected to is loopback: refused before a byte is sent.
        strict = WebhookPolicy(hosts=("127.0.0.1",), allow_http=True)
        with pytest.raises(DeliveryFailed, match="loopback"):
            send_webhook(f"{base}/ok", "wecom", "标题", "正文", timeout=5, policy=strict)
        assert hits == ["/redirect", "/ok"]
    finally:
        server.shutdown()
