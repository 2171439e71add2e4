"""Schema-driven fuzzing of every service: no 5xx, and every response as documented.

For each service, schemathesis generates requests from its served /openapi.json (fixed
seed, a bounded number of examples per operation; positive and negative cases, and cases
aimed at stored records, and valid requests with integers of any size), as a signed-in caller. Every response must be a non-5xx with a
declared status, content type and body schema.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests import support
from tests.integration.conftest import STACK_SERVICES as SERVICES
from tests.integration.test_api_contract import _document

pytestmark = pytest.mark.integration

# Examples per operation and mode: enough to reach each field's edge cases, bounded for CI.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


# Beyond ~4,300 digits the client could not serialise the number either (Python's own
# int-to-string limit); the generated hostile-input test sends 5,000 digits as raw bytes.
HUGE_INTEGERS = st.integers(min_value=10 ** 19, max_value=10 ** 4000) | st.integers(
    min_value=-10 ** 4000, max_value=-10 ** 19) | st.integers()


def _replace_integers(value, number: int):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return number
    if isinstance(value, dict):
        return {k: _replace_integers(v, number) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_integers(v, number) for v in value]
    return value


# A request line is at most 8 KB (eventlet's own bound answers a longer one with a bare 414
# before any service sees it): query integers keep to 1,000 digits.
QUERY_INTEGER_LIMIT = 10 ** 1000


def _with_integer(case, number: int):
    if isinstance(case.body, (dict, list)):
        case.body = _replace_integers(case.body, number)
    if isinstance(case.query, dict):
        bounded = number if abs(number) < QUERY_INTEGER_LIMIT else (1 if number > 0 else -1) * (
            abs(number) % QUERY_INTEGER_LIMIT)
        case.query = _replace_integers(case.query, bounded)
    return case


def _fuzz(base_url: str, document: dict, known: dict[str, str]) -> list[str]:
    """Positive and negative cases for every operation, and for operations on a stored
    record, cases aimed at that record (random ids would only ever meet 404)."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                     response_schema_conformance, status_code_conformance)

    schema = schemathesis.openapi.from_dict(document)
    # Every role, the platform's too: intake's case submission is then fuzzed past its 403.
    from services.contracts.identity import ALL_ROLES
    headers = support.bearer(grants=[(role, support.TEST_PROVINCE) for role in ALL_ROLES])
    failures: list[str] = []
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    for result in schema.get_all_operations():
        operation = result.ok()
        names = [p.name for p in operation.path_parameters]
        strategies = {mode.value: operation.as_strategy(generation_mode=mode)
                      for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)}
        if names and all(name in known for name in names):
            strategies["stored record"] = operation.as_strategy(
                path_parameters={name: known[name] for name in names})
        # Valid requests whose integers are of any size (issue 27: a 5,000-digit integer was a
        # 500): every integer in the body and query replaced by one drawn from ±10^4000.
        strategies["huge integers"] = st.builds(_with_integer, strategies[GenerationMode.POSITIVE.value],
                                                HUGE_INTEGERS)
        for label, strategy in strategies.items():

            @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                response = case.call(base_url=base_url, headers=headers)
                case.validate_response(response, checks=checks)

            try:
                run()
            except Unsatisfiable:
                # Negative mode on an operation whose every input is valid (no parameters,
                # or free-text path ids): there is no invalid request to make.
                continue
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({label}): {exc}"[:3000])
    return failures


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_fuzzing_finds_no_server_error_and_no_response_off_the_schema(stack, service):
    failures = _fuzz(stack[service], _document(stack[service]), stack["known"])
    assert not failures, "\n\n".join(failures)
