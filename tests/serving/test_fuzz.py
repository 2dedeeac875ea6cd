"""Property-based fuzz of the published OpenAPI schema: no input gives a 5xx."""

from __future__ import annotations

import pytest
from conftest import ACME

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402


@pytest.fixture(scope="module")
def api(serving):
    base = serving.deploy("fuzz", "/")
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


def test_openapi_fuzz_never_5xx(api):
    failures = []
    for op in api.get_all_operations():
        operation = op.ok()

        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case):
            for headers in (ACME, {}):
                r = case.call(headers=headers, timeout=30)
                if r.status_code >= 500:
                    failures.append((case.method, case.formatted_path, r.status_code, r.text))

        check()
    assert not failures, failures[:5]
