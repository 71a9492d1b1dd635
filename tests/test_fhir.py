"""The FHIR R4 resource types, held against an authoritative list.

The reference is ``fhirclient`` (SMART on FHIR's Python client, a test
dependency): its models are generated from the FHIR 4.0.1 definitions, one
class per resource type, which the test checks the package states.  Its
``Resource`` subclasses are the 146 concrete R4 resource types plus the
abstract ``Resource`` and ``DomainResource`` (the codes of R4's
``ResourceType`` value set, https://hl7.org/fhir/R4/valueset-resource-types.html).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import fhirclient.models
from fhirclient.models.resource import Resource

from healthsync.fhir import R4_RESOURCE_TYPES, RECORD_TYPES, record_type_error
from healthsync.openapi import build_schema

ABSTRACT = {"Resource", "DomainResource"}


def reference_types() -> set[str]:
    """Every resource type the 4.0.1 models define, abstract ones included."""
    names = set()
    for info in pkgutil.iter_modules(fhirclient.models.__path__):
        module = importlib.import_module(f"fhirclient.models.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Resource) and cls.__module__ == module.__name__:
                names.add(cls.resource_type)
    return names


def test_the_reference_is_fhir_4_0_1():
    header = Path(fhirclient.models.__path__[0], "account.py").read_text()
    assert "Generated from FHIR 4.0.1" in header


def test_resource_types_are_exactly_r4():
    reference = reference_types()
    assert ABSTRACT <= reference
    assert R4_RESOURCE_TYPES == reference - ABSTRACT
    assert len(R4_RESOURCE_TYPES) == 146
    assert {"PaymentNotice", "PaymentReconciliation"} <= RECORD_TYPES
    assert RECORD_TYPES == R4_RESOURCE_TYPES - {"Patient"}
    for name in ABSTRACT | {"Patient", "observation", "PaymentNotices"}:
        assert record_type_error(name), name


def test_openapi_enums_follow_the_list():
    document = build_schema()
    schemas = document["components"]["schemas"]

    def enum(schema: dict) -> list[str]:  # each enum is one named schema, referenced
        return schemas[schema["$ref"].rsplit("/", 1)[1]]["enum"] if "$ref" in schema else schema["enum"]

    enums = {
        (path, param["name"]): enum(param["schema"])
        for path, item in document["paths"].items()
        for op in item.values()
        if isinstance(op, dict)
        for param in op.get("parameters", [])
        if param["name"] == "resource_type"
    }
    assert enums[("/api/records/", "resource_type")] == sorted(RECORD_TYPES)
    assert enums[("/api/sync/download/", "resource_type")] == sorted(R4_RESOURCE_TYPES)


async def test_a_payment_notice_is_a_record(api):
    p = await api.new_patient()
    resp = await api.post("/api/records/", {"patient": p["id"], "resource_type": "PaymentNotice",
                                            "data": {"status": "active"}})
    assert resp.status == 201, resp.body
    changes = [{"operation": "create", "resource_type": "PaymentReconciliation", "client_temp_id": "r1",
                "payload": {"patient_id": p["id"], "status": "active"}}]
    resp = await api.post("/api/sync/upload/", {"device_id": "tab-1", "changes": changes})
    assert resp.json["results"][0]["status"] == "created", resp.body
    listed = await api.get("/api/records/?resource_type=PaymentNotice")
    assert listed.status == 200 and len(listed.json) == 1
