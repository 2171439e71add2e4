#!/usr/bin/env bash
# Sets up Chuangwei on a fresh Debian machine, once: what the system lacks (RabbitMQ, Node for
# the console's assets, the CJK font of the bulletin PDF, Python's venv), the virtual
# environment with the project, and the console's chart library and font.
#
#   ./setup.sh               what running a stack needs      then: .venv/bin/chuangwei-stack
#   ./setup.sh --for-tests   also what the test suite needs  then: .venv/bin/python -m pytest
#
# Safe to run again: it installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")"

for_tests=0
case "${1:-}" in
  --for-tests) for_tests=1 ;;
  "") ;;
  *) echo "用法 usage: ./setup.sh [--for-tests]" >&2; exit 2 ;;
esac

say() { echo "== $*"; }

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

need=()
command -v rabbitmq-server >/dev/null || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v npm >/dev/null || need+=(npm)
# The bulletin PDF embeds a subset of this free CJK font.
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
command -v "$PYTHON" >/dev/null || need+=(python3)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ "$for_tests" = 1 ]; then
  command -v pg_ctlcluster >/dev/null || need+=(postgresql)
  # promtool and prometheus: the monitoring rules' tests; poppler renders the PDF in tests;
  # Debian's chromium and its driver run the console's browser tests (no browser download).
  command -v promtool >/dev/null || need+=(prometheus)
  command -v pdftoppm >/dev/null || need+=(poppler-utils)
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi

if [ ${#need[@]} -gt 0 ]; then
  say "installing system packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
  # The packages may start their own RabbitMQ (and Prometheus) services; `chuangwei-stack`
  # uses a broker that answers on AMQP_URI, or starts a node of its own under var/rabbitmq.
fi
command -v "$PYTHON" >/dev/null || PYTHON=python3

say "Python environment (.venv)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

say "console assets (chart library and CJK font, served by the console itself: no CDN at run time)"
npm ci --prefix services/console/assets --no-audit --no-fund --loglevel=error

say "完成 done. 运行 run:  .venv/bin/chuangwei-stack    (控制台 console: http://127.0.0.1:8080/)"
