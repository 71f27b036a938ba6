"""Our own OpenAPI specs: complete for what we answer and path-compatible with Mender's."""

import jsonschema
import pytest

from conftest import MENDER_OPENAPI, oas_to_jsonschema, response_checker

METHODS = ("get", "put", "post", "delete", "patch")


def _operations(spec_set):
    for _, template, item in spec_set.paths:
        for method in METHODS:
            if method in item:
                yield template, method, item[method]


def test_every_schema_compiles():
    checker = response_checker()
    count = 0
    for template, method, op in _operations(checker.ours):
        for status, resp in op["responses"].items():
            for media in (resp.get("content") or {}).values():
                jsonschema.Draft4Validator.check_schema(oas_to_jsonschema(media["schema"]))
                count += 1
        body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
        if body:
            jsonschema.Draft4Validator.check_schema(oas_to_jsonschema(body["schema"]))
    assert count > 20


def test_every_response_documents_the_request_id_and_errors_use_error():
    checker = response_checker()
    for template, method, op in _operations(checker.ours):
        for status, resp in op["responses"].items():
            where = f"{method.upper()} {template} {status}"
            header = (resp.get("headers") or {}).get("X-MEN-RequestID")
            assert header and header.get("required"), f"{where}: X-MEN-RequestID not documented"
            if int(status) >= 400:
                schema = resp["content"]["application/json"]["schema"]
                assert {"error", "request_id"} <= set(schema["required"]), where


def test_management_operations_document_auth_failures():
    checker = response_checker()
    for template, method, op in _operations(checker.ours):
        if not template.startswith("/api/management/"):
            continue
        where = f"{method.upper()} {template}"
        assert "401" in op["responses"] and "403" in op["responses"], where
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"], where
        assert "503" in op["responses"], f"{where}: store outage not documented"
        if "requestBody" in op:
            assert "413" in op["responses"], f"{where}: body limit not documented"


def test_health_503_has_checks():
    checker = response_checker()
    _, item = checker.ours.find("/api/internal/v1/iot-manager/health")
    schema = item["get"]["responses"]["503"]["content"]["application/json"]["schema"]
    assert "checks" in schema["required"]


@pytest.mark.skipif(MENDER_OPENAPI is None, reason="Mender's OpenAPI files are not available")
def test_every_mender_path_and_method_is_ours_too():
    checker = response_checker()
    assert checker.mender.paths, "Mender's files were not loaded"
    for template, method, _ in _operations(checker.mender):
        found = checker.ours.find(template)
        assert found and found[0] == template, f"{template} missing from openapi/"
        assert method in found[1], f"{method.upper()} {template} missing from openapi/"
