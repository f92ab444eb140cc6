"""Input taken strictly: JSON bodies as JSON wrote them (integers are JSON integers,
enums their exact values, no key twice, no NaN), and design file names from one safe
set. Each refusal is 422 in the error shape, naming the field and what it expected,
and changes nothing."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from fpgalab.service.jsonbody import StrictJSONRoute
from fpgalab.service.routes import audit, boards, health, jobs, sessions
from fpgalab.service.store import Store
from tests.helpers import assert_error, board, jobs_in_redis, reserve

#: What an integer field expects.
INT = "a JSON integer"
#: (case, route, JSON body, field named first, what it expected, what it got)
LOOSE: list[tuple[str, str, Any, str, str, str]] = [
    ("op a string", "run", {"op": "2", "address": 0}, "op", INT, "a string"),
    ("op true: a write", "run", {"op": True, "address": 0, "data": [1]}, "op", INT, "true"),
    ("op 2.0", "run", {"op": 2.0, "address": 0}, "op", INT, "2.0"),
    ("op 3", "run", {"op": 3, "address": 0}, "op", "1 or 2", "3"),
    ("address a string", "run", {"op": 2, "address": "536870912"}, "address", INT, "a string"),
    ("address 0.0", "run", {"op": 2, "address": 0.0}, "address", INT, "0.0"),
    ("address false", "run", {"op": 2, "address": False}, "address", INT, "false"),
    ("word a string", "run", {"op": 1, "address": 0, "data": ["1"]}, "data.0", INT, "a string"),
    ("word true", "run", {"op": 1, "address": 0, "data": [7, True]}, "data.1", INT, "true"),
    ("word 1.0", "run", {"op": 1, "address": 0, "data": [1.0]}, "data.0", INT, "1.0"),
    ("data an object", "run", {"op": 1, "address": 0, "data": {"0": 1}}, "data", "a JSON array",
     "an object"),
    ("length a string", "run", {"op": 2, "address": 0, "length": "2"}, "length", INT, "a string"),
    ("length 2.0", "run", {"op": 2, "address": 0, "length": 2.0}, "length", INT, "2.0"),
    ("seconds a string", "renew", {"seconds": "60"}, "seconds", INT, "a string"),
    ("seconds 60.0", "renew", {"seconds": 60.0}, "seconds", INT, "60.0"),
    ("seconds true", "renew", {"seconds": True}, "seconds", INT, "true"),
    ("reason a number", "maintenance", {"reason": 5}, "reason", "a JSON string", "5"),
    ("an array for the body", "run", [2, 0], "body", "a JSON object", "an array"),
]  # fmt: skip

PATHS = {
    "run": "/fpga/0/run",
    "renew": "/fpga/0/session/renew",
    "maintenance": "/fpga/0/maintenance",
}


@pytest.mark.parametrize(
    ("route", "body", "field", "expected", "got"),
    [c[1:] for c in LOOSE],
    ids=[c[0] for c in LOOSE],
)
async def test_a_loosely_typed_json_body_is_refused(
    lab: httpx.AsyncClient, store: Store, route: str, body: Any,
    field: str, expected: str, got: str,
) -> None:  # fmt: skip
    """A value of another JSON type than its field's (a number in a string, a boolean or
    a float for an integer, a non-member for an enum) is 422 validation_error saying the
    field, what it expected and what it got; nothing is queued, the session unchanged."""
    accepted = await reserve(lab, 0)
    before = await board(lab, 0)
    r = await lab.post(PATHS[route], json=body)
    message = assert_error(r, 422, "validation_error")["message"]
    assert message.startswith(f"{field}: expected {expected}, got {got}"), message
    assert [j["job_id"] for j in await jobs_in_redis(store)] == [accepted["job_id"]]
    assert await board(lab, 0) == before


DUPLICATES: list[tuple[str, str, bytes, str]] = [
    ("op twice: a read that writes", "run", b'{"op": 2, "address": 0, "op": 1, "data": [1]}', "op"),
    ("address twice", "run", b'{"op": 2, "address": 0, "address": 4}', "address"),
    ("seconds twice", "renew", b'{"seconds": 60, "seconds": 7200}', "seconds"),
    ("reason twice", "maintenance", b'{"reason": "a", "reason": "b"}', "reason"),
    ("nested", "run", b'{"op": 2, "address": 0, "x": {"k": 1, "k": 2}}', "k"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "raw", "key"), [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES]
)
async def test_a_key_given_twice_is_refused(
    lab: httpx.AsyncClient, store: Store, route: str, raw: bytes, key: str
) -> None:
    """A JSON object naming a key twice (which a parser would read as its last value) is
    422 validation_error naming the key; nothing is queued, the board unchanged."""
    accepted = await reserve(lab, 0)
    before = await board(lab, 0)
    r = await lab.post(PATHS[route], content=raw, headers={"Content-Type": "application/json"})
    message = assert_error(r, 422, "validation_error")["message"]
    assert message == f"body: the key '{key}' appears twice in one object", message
    assert [j["job_id"] for j in await jobs_in_redis(store)] == [accepted["job_id"]]
    assert await board(lab, 0) == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json(lab: httpx.AsyncClient, constant: str) -> None:
    """NaN and Infinity, which Python's parser would take, are 422 validation_error."""
    await reserve(lab, 0)
    raw = f'{{"op": 2, "address": {constant}}}'.encode()
    r = await lab.post("/fpga/0/run", content=raw, headers={"Content-Type": "application/json"})
    message = assert_error(r, 422, "validation_error")["message"]
    assert message == f"body: {constant} is not a JSON value", message


async def test_strict_bodies_still_take_exact_json(lab: httpx.AsyncClient) -> None:
    """Exact JSON integers, enum values and the largest address are accepted as before."""
    await reserve(lab, 0)
    for body in (
        {"op": 1, "address": 2**32 - 4, "data": [2**32 - 1]},
        {"op": 2, "address": 0, "length": 3},
    ):
        assert (await lab.post("/fpga/0/run", json=body)).status_code == 202
    assert (await lab.post("/fpga/0/session/renew", json={"seconds": 60})).status_code == 200
    assert (await lab.post("/fpga/0/maintenance", json={"reason": "fan"})).status_code == 200


def test_every_route_with_a_body_parses_it_strictly() -> None:
    """Every API route that takes a body is a StrictJSONRoute: none parses JSON its own way."""
    with_body = [
        route
        for module in (audit, boards, health, jobs, sessions)
        for route in module.router.routes
        if isinstance(route, APIRoute) and route.body_field is not None
    ]
    assert {r.name for r in with_body} >= {"submit", "run", "maintenance", "renew"}
    assert all(isinstance(r, StrictJSONRoute) for r in with_body), [
        r.name for r in with_body if not isinstance(r, StrictJSONRoute)
    ]


# -- design file names ------------------------------------------------------------------------


def multipart(filename: bytes, content: bytes = b"Design = None\n") -> tuple[bytes, str]:
    """A one-file form with ``filename`` as sent, byte for byte (no client escaping)."""
    boundary = b"strictnames"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename + b'"\r\nContent-Type: text/plain\r\n\r\n' + content + b"\r\n--"
        + boundary + b"--\r\n"
    )  # fmt: skip
    return body, "multipart/form-data; boundary=" + boundary.decode()


@pytest.mark.parametrize(
    "filename",
    [
        b"<img src=x onerror=alert(1)>.v", b"my design.v", b".hidden.py", b"-rf.py",
        "d\u00e9sign.v".encode(), "\u202eexe.v".encode(), b"a;b.sv", b"a'b.py", b"x" * 98 + b".py",
        b"design.txt", b"design", b"design.py.txt", b"",
    ],
    ids=[
        "markup", "space", "leading dot", "leading dash", "non-ASCII letter", "bidi override",
        "semicolon", "quote", "101 characters", "txt suffix", "no suffix", "py then txt",
        "empty",
    ],
)  # fmt: skip
async def test_a_file_name_outside_the_safe_set_is_refused(
    lab: httpx.AsyncClient, store: Store, filename: bytes
) -> None:
    """A design file name that is not 1-100 of A-Z a-z 0-9 . _ + - (starting with a letter
    or digit) with a .py, .v or .sv suffix is 422 unsupported_design naming the allowed
    characters; the refused name is not echoed, and nothing is queued."""
    body, content_type = multipart(filename)
    r = await lab.post("/fpga/3/submit", content=body, headers={"Content-Type": content_type})
    message = assert_error(r, 422, "unsupported_design")["message"]
    assert "A-Z a-z 0-9 . _ + -" in message and ".py, .v, .sv" in message, message
    if not re.fullmatch(rb"[A-Za-z0-9._+-]*", filename):
        assert filename.decode(errors="replace") not in message, message
    assert await jobs_in_redis(store) == []
    assert (await board(lab, 3))["state"] == "idle"


@pytest.mark.parametrize(
    "filename", ["alu_v2+fast-1.sv", "TOP.V", "x" * 97 + ".py", "3.v", "a.b.c.py"]
)
async def test_a_file_name_in_the_safe_set_is_accepted(
    lab: httpx.AsyncClient, filename: str
) -> None:
    """Names from the safe set, any case of suffix, up to 100 characters, are accepted and
    kept as sent."""
    body, content_type = multipart(filename.encode())
    r = await lab.post("/fpga/4/submit", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 202, r.text
    record = (await lab.get(f"/fpga/4/jobs/{r.json()['job_id']}")).json()
    assert record["filename"] == filename
