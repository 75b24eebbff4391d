"""Bodies in and out: encoding by type, decoding by content type, stamped properties."""

from __future__ import annotations

import dataclasses
import datetime
import time

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import leveret
from leveret._payload import (
    decode_body,
    decode_json,
    decode_model,
    encode_body,
    new_message_id,
    stamp,
    timestamp_bytes,
)
from leveret.protocol._codec import (
    decode_properties,
    encode_properties,
    encode_shortstr,
    rpc_properties,
    stamp_prefix,
    stamped_properties,
)


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(pydantic.BaseModel):
    id: int
    item: str


@pytest.mark.parametrize(
    ("body", "wire", "content_type"),
    [
        (b"raw", b"raw", None),
        (bytearray(b"ba"), b"ba", None),
        (memoryview(b"mv"), b"mv", None),
        ("héllo", "héllo".encode(), "text/plain"),
        ({"a": [1, 2.5, None, True]}, b'{"a":[1,2.5,null,true]}', "application/json"),
        ([1, "é"], '[1,"é"]'.encode(), "application/json"),
        ((1, 2), b"[1,2]", "application/json"),
        (42, b"42", "application/json"),
        (Point(1, 2), b'{"x":1,"y":2}', "application/json"),
        (Order(id=7, item="tea"), b'{"id":7,"item":"tea"}', "application/json"),
    ],
)
def test_encode_body_by_type(body: object, wire: bytes, content_type: str | None) -> None:
    assert encode_body(body) == (wire, content_type)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (None, "got NoneType: None"),
        ({1, 2}, "got set"),
        (Point, "got type"),
        ({"k": b"bytes"}, "not JSON-serialisable"),
        ([float("inf")], "not JSON-serialisable"),
    ],
)
def test_encode_body_refuses_what_it_cannot_encode(body: object, named: str) -> None:
    with pytest.raises(TypeError, match=r"^body ") as info:
        encode_body(body)
    assert named in str(info.value)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
    )
)
def test_json_round_trip(value: object) -> None:
    if value is None:
        return
    wire, content_type = encode_body({"v": value})
    assert decode_body(wire, content_type, None) == {"v": value}


@pytest.mark.parametrize(
    ("content_type", "encoding", "body", "decoded"),
    [
        ("application/json", None, b'{"a":1}', {"a": 1}),
        ("application/vnd.api+json; charset=utf-8", None, b"[1]", [1]),
        ("text/plain", None, "é".encode(), "é"),
        ("text/plain; charset=latin-1", None, "é".encode("latin-1"), "é"),
        ("TEXT/CSV", None, b"a,b", "a,b"),
        (None, None, b"\x00\x01", b"\x00\x01"),
        ("application/octet-stream", None, b"x", b"x"),
    ],
)
def test_decode_body_by_content_type(
    content_type: str | None, encoding: str | None, body: bytes, decoded: object
) -> None:
    assert decode_body(body, content_type, encoding) == decoded


def test_decode_errors_name_the_problem() -> None:
    with pytest.raises(leveret.PayloadError, match=r"not valid JSON .*b'\{oops'"):
        decode_json(b"{oops", "application/json")
    with pytest.raises(leveret.PayloadError, match="not utf-8 text"):
        decode_body(b"\xff", "text/plain", None)
    with pytest.raises(leveret.PayloadError, match="not nope text"):
        decode_body(b"x", "text/plain; charset=nope", None)
    with pytest.raises(leveret.PayloadError, match="does not match Order") as info:
        decode_model(b'{"id": "seven", "item": "tea"}', Order)
    assert "id" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError, match="pydantic model class"):
        decode_model(b"{}", dict)
    assert decode_model(b'{"id": 7, "item": "tea"}', Order) == Order(id=7, item="tea")


def test_message_ids_are_unique_and_short() -> None:
    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) < 64 and i.isascii() for i in ids)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json"])
@pytest.mark.parametrize("persistent", [False, True])
def test_stamped_properties_are_byte_identical_to_encode_properties(
    content_type: str | None, persistent: bool
) -> None:
    message_id = new_message_id()
    stamp = timestamp_bytes()
    wire = stamped_properties(stamp_prefix(content_type, persistent), message_id, stamp)
    seconds = int.from_bytes(stamp, "big")
    expected = leveret.Properties(
        content_type=content_type,
        delivery_mode=2 if persistent else None,
        message_id=message_id,
        timestamp=datetime.datetime.fromtimestamp(seconds, datetime.UTC),
    )
    assert wire == encode_properties(expected)
    assert decode_properties(wire) == expected


@pytest.mark.parametrize("content_type", [None, "application/json"])
@pytest.mark.parametrize("persistent", [False, True])
def test_stamp_is_stamped_properties_with_a_new_id_and_the_time(
    content_type: str | None, persistent: bool
) -> None:
    prefix = stamp_prefix(content_type, persistent)
    wires = [stamp(prefix) for _ in range(1000)]
    decoded = [decode_properties(wire) for wire in wires]
    ids = [properties.message_id for properties in decoded]
    assert len(set(ids)) == 1000
    for wire, properties in zip(wires, decoded, strict=True):
        assert properties.message_id is not None
        assert properties.timestamp is not None
        same = stamped_properties(
            prefix,
            properties.message_id,
            int(properties.timestamp.timestamp()).to_bytes(8, "big"),
        )
        assert wire == same
        assert (properties.content_type, properties.delivery_mode) == (
            content_type,
            2 if persistent else None,
        )
    assert abs(decoded[-1].timestamp.timestamp() - time.time()) < 5  # type: ignore[union-attr]


@given(
    content_type=st.none() | st.sampled_from(["application/json", "text/plain; charset=utf-8"]),
    correlation_id=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60),
    reply_to=st.none()
    | st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60),
    expiration=st.none() | st.integers(min_value=1, max_value=10**9).map(str),
    stamped=st.booleans(),
)
def test_rpc_properties_are_byte_identical_to_encode_properties(
    content_type: str | None,
    correlation_id: str,
    reply_to: str | None,
    expiration: str | None,
    stamped: bool,
) -> None:
    message_id = new_message_id() if stamped else None
    stamp = timestamp_bytes() if stamped else None
    reply_to_field = None if reply_to is None else encode_shortstr(reply_to, "reply_to")
    wire = rpc_properties(
        content_type, correlation_id, reply_to_field, expiration, message_id, stamp
    )
    expected = leveret.Properties(
        content_type=content_type,
        correlation_id=correlation_id,
        reply_to=reply_to,
        expiration=expiration,
        message_id=message_id,
        timestamp=None
        if stamp is None
        else datetime.datetime.fromtimestamp(int.from_bytes(stamp, "big"), datetime.UTC),
    )
    assert wire == encode_properties(expected)
    assert decode_properties(wire) == expected
