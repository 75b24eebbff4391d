"""Bodies beyond bytes on a real broker: str and JSON out, decoded by content type in."""

from __future__ import annotations

import dataclasses
import datetime

import pydantic
import pytest

import leveret

pytestmark = pytest.mark.integration


class Order(pydantic.BaseModel):
    id: int
    item: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def take(conn: leveret.Connection, queue: str) -> leveret.Message:
    message = await conn.get(queue, no_ack=True)
    assert message is not None
    return message


async def test_text_json_dataclass_and_model_bodies_round_trip(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish("grüße", routing_key=queue_name)
    await conn.publish({"order": 7, "items": ["tea", None]}, routing_key=queue_name)
    await conn.publish(Point(1, 2), routing_key=queue_name)
    await conn.publish(Order(id=3, item="cake"), routing_key=queue_name, persistent=True)
    await conn.publish(b"\x00raw", routing_key=queue_name)

    text = await take(conn, queue_name)
    assert (text.properties.content_type, text.text(), text.decode()) == (
        "text/plain",
        "grüße",
        "grüße",
    )
    data = await take(conn, queue_name)
    assert data.properties.content_type == "application/json"
    assert data.json() == data.decode() == {"order": 7, "items": ["tea", None]}
    point = await take(conn, queue_name)
    assert point.json() == {"x": 1, "y": 2}
    model = await take(conn, queue_name)
    assert model.model(Order) == Order(id=3, item="cake")
    assert model.properties.delivery_mode == 2
    raw = await take(conn, queue_name)
    assert raw.properties.content_type is None
    assert raw.decode() == b"\x00raw"


async def test_message_id_and_timestamp_are_set_unless_given(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    await conn.publish(b"a", routing_key=queue_name)
    await conn.publish(b"b", routing_key=queue_name)
    mine = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    given = leveret.Properties(
        message_id="my-id", timestamp=mine, headers={"tenant": "acme", "n": 1}
    )
    await conn.publish({"k": 1}, routing_key=queue_name, properties=given)
    await conn.publish(
        "x", routing_key=queue_name, properties=leveret.Properties(content_type="text/csv")
    )
    first, second, third, fourth = [await take(conn, queue_name) for _ in range(4)]
    assert first.message_id
    assert second.message_id
    assert first.message_id != second.message_id
    assert first.properties.timestamp is not None
    assert first.properties.timestamp >= before
    # Given values win and user headers travel untouched; the content type is filled in.
    assert third.properties.message_id == "my-id"
    assert third.properties.timestamp == mine
    assert third.properties.headers == {"tenant": "acme", "n": 1}
    assert third.properties.content_type == "application/json"
    assert given.content_type is None  # the caller's Properties object was not changed
    assert fourth.properties.content_type == "text/csv"
    assert fourth.decode() == "x"


async def test_stamping_can_be_turned_off(rabbitmq_url: str, queue_name: str) -> None:
    async with leveret.connect(rabbitmq_url, stamp_messages=False) as conn:
        await conn.declare_queue(queue_name, exclusive=True)
        await conn.publish(b"plain", routing_key=queue_name)
        await conn.publish([1], routing_key=queue_name)
        plain, listed = await take(conn, queue_name), await take(conn, queue_name)
    assert plain.properties == leveret.Properties()
    assert listed.properties == leveret.Properties(content_type="application/json")


async def test_bad_bodies_fail_to_decode_with_the_reason(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish(b"{not json", routing_key=queue_name)
    await conn.publish({"id": "seven"}, routing_key=queue_name)
    broken = await take(conn, queue_name)
    with pytest.raises(leveret.PayloadError, match="not valid JSON"):
        broken.json()
    invalid = await take(conn, queue_name)
    with pytest.raises(leveret.PayloadError, match="does not match Order") as info:
        invalid.model(Order)
    assert "item" in str(info.value)  # pydantic names the missing field


async def test_rpc_takes_and_returns_json(conn: leveret.Connection, queue_name: str) -> None:
    await conn.declare_queue(queue_name, exclusive=True)

    async def add(request: leveret.Message) -> dict[str, int]:
        numbers = request.json()
        return {"sum": numbers["a"] + numbers["b"]}

    async with conn.serve(queue_name, add):
        reply = await conn.call(queue_name, {"a": 2, "b": 3}, timeout=10)
    assert reply.properties.content_type == "application/json"
    assert reply.json() == {"sum": 5}
