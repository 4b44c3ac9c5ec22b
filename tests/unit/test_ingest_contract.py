"""schemathesis over ingest's OpenAPI document: no 5xx, and no answer the schema does not allow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.fakes import (
    fake_ingest_runtime,
)

pytestmark = pytest.mark.unit

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


settings_for_contract = IngestSettings(
    ingest_api_keys="internal-key", ingest_max_body_bytes=200_000
)
app = create_app(settings_for_contract, fake_ingest_runtime())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _lifespan() -> Iterator[None]:
    """The lifespan opens the fake runtime once for every generated case."""
    with TestClient(app):
        yield


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_keeps_its_contract(case: Case) -> None:
    case.call_and_validate(headers={"Authorization": "Bearer internal-key"}, checks=CHECKS)
