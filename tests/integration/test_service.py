"""The service layer on a real broker: calls, events, commands, outcomes, dead letters."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import leveret
from leveret.service import CallAgain, CallContext, Keys, Mesh, MeshNames, Service, generate_key
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

BOUND = 15


@pytest.fixture
async def names(conn: leveret.Connection, queue_name: str) -> AsyncIterator[MeshNames]:
    """A mesh of the test's own (its exchanges and dead-letter queue), removed afterwards."""
    prefix = queue_name
    mesh_names = MeshNames(
        rpc_exchange=f"{prefix}.rpc",
        events_exchange=f"{prefix}.events",
        dead_letter_exchange=f"{prefix}.dlx",
        dead_letter_queue=f"{prefix}.dlq",
    )
    yield mesh_names
    for exchange in (
        mesh_names.rpc_exchange,
        mesh_names.events_exchange,
        mesh_names.dead_letter_exchange,
    ):
        await conn.delete_exchange(exchange)
    await conn.delete_queue(mesh_names.dead_letter_queue)


async def dead_letter(conn: leveret.Connection, names: MeshNames) -> leveret.Message:
    async with asyncio.timeout(BOUND), conn.consume(names.dead_letter_queue) as messages:
        message = await anext(messages)
        message.ack()
        return message


async def test_two_services_call_each_other_and_trace_ids_propagate(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    orders = Service(f"{queue_name}-orders", names=names)
    stock = Service(f"{queue_name}-stock", names=names)
    audit = Service(f"{queue_name}-audit", names=names)
    seen: list[tuple[str, str, dict[str, object]]] = []
    got_event = asyncio.Event()

    @stock.method
    async def reserve(params: dict[str, int], ctx: CallContext) -> dict[str, bool]:
        seen.append(("reserve", ctx.trace_id, ctx.context))
        return {"reserved": params["qty"] <= 5}

    @orders.method
    async def create(params: dict[str, int], ctx: CallContext) -> dict[str, object]:
        seen.append(("create", ctx.trace_id, ctx.context))
        reply = await orders_mesh.call(f"{stock.name}.reserve", {"qty": params["qty"]}, timeout=10)
        await orders_mesh.publish_event(f"{queue_name}.order.created", {"qty": params["qty"]})
        return {"ok": reply["reserved"]}

    @audit.event(f"{queue_name}.order.*")
    async def on_order(payload: dict[str, int], ctx: CallContext) -> None:
        seen.append(("event", ctx.trace_id, ctx.context))
        got_event.set()

    async with (
        stock.run(conn),
        orders.run(conn) as orders_mesh,
        audit.run(conn),
        Mesh(conn, names=names) as client,
    ):
        result = await client.call(
            f"{orders.name}.create", {"qty": 3}, timeout=10, context={"user": "ada"}
        )
        await asyncio.wait_for(got_event.wait(), BOUND)
    assert result == {"ok": True}
    assert [what for what, _, _ in seen] == ["create", "reserve", "event"]
    trace_ids = {trace for _, trace, _ in seen}
    assert len(trace_ids) == 1  # one trace from the client's call through both services
    assert all(context == {"user": "ada"} for _, _, context in seen)
    for service in (orders, stock, audit):
        await conn.delete_queue(service.name)


async def test_three_instances_share_the_load(
    rabbitmq_url: str, conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    served: Counter[str] = Counter()

    def instance(number: int) -> Service:
        service = Service(f"{queue_name}-work", names=names, prefetch=1)

        @service.method
        async def work(params: int, ctx: CallContext) -> int:
            served[f"instance {number}"] += 1
            await asyncio.sleep(0.01)  # long enough that one instance cannot take everything
            return params * 2

        return service

    async with (
        leveret.connect(rabbitmq_url) as c1,
        leveret.connect(rabbitmq_url) as c2,
        leveret.connect(rabbitmq_url) as c3,
        instance(1).run(c1),
        instance(2).run(c2),
        instance(3).run(c3),
        Mesh(conn, names=names) as client,
    ):
        results = await asyncio.gather(
            *(client.call(f"{queue_name}-work.work", n, timeout=20) for n in range(60))
        )
    assert results == [n * 2 for n in range(60)]
    assert sum(served.values()) == 60
    assert set(served) == {"instance 1", "instance 2", "instance 3"}
    await conn.delete_queue(f"{queue_name}-work")


async def test_call_again_once_then_dead_lettered_and_the_caller_told(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-flaky", names=names)
    calls: list[bool] = []

    @service.method
    async def charge(params: object, ctx: CallContext) -> None:
        assert ctx.message is not None
        calls.append(ctx.message.redelivered)
        raise CallAgain("payment provider busy")

    async with service.run(conn), Mesh(conn, names=names) as client:
        with pytest.raises(leveret.RemoteError) as error:
            await client.call(f"{service.name}.charge", {"amount": 5}, timeout=10)
        parked = await dead_letter(conn, names)
    assert calls == [False, True]  # requeued once, then not again
    assert error.value.type_name == "CallAgain"
    assert error.value.remote_message == "payment provider busy"
    assert parked.headers["x-leveret-reason"] == (
        "failed again after one more try: CallAgain: payment provider busy"
    )
    assert json.loads(parked.body)["method"] == "charge"
    await conn.delete_queue(service.name)


async def test_an_unrecoverable_error_is_dead_lettered_at_once(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-strict", names=names)
    calls = 0

    @service.method
    async def parse(params: object, ctx: CallContext) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"bad input {params!r}")

    async with service.run(conn), Mesh(conn, names=names) as client:
        with pytest.raises(leveret.RemoteError, match="ValueError: bad input 'x'"):
            await client.call(f"{service.name}.parse", "x", timeout=10)
        await client.send_command(f"{service.name}.parse", "y")  # no caller to tell
        reasons = {(await dead_letter(conn, names)).headers["x-leveret-reason"] for _ in range(2)}
        with pytest.raises(leveret.RemoteError, match=r"LookupError: .* has no method 'nope'"):
            await client.call(f"{service.name}.nope", timeout=10)
    assert calls == 2
    assert reasons == {
        "unrecoverable: ValueError: bad input 'x'",
        "unrecoverable: ValueError: bad input 'y'",
    }
    await conn.delete_queue(service.name)


async def test_an_expired_request_lands_in_the_dead_letter_queue(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-idle", names=names)

    @service.method
    async def slow(params: object, ctx: CallContext) -> None:
        pass

    # Declare the topology, but serve nobody: the command waits in the queue and expires.
    async with service.run(conn):
        pass
    async with Mesh(conn, names=names) as client:
        await client.send_command(f"{service.name}.slow", {"n": 1}, ttl=0.05)
        expired = await dead_letter(conn, names)
    assert json.loads(expired.body)["params"] == {"n": 1}
    death = expired.headers["x-death"][0]  # type: ignore[index]
    assert (death["reason"], death["queue"]) == ("expired", service.name)
    await conn.delete_queue(service.name)


async def test_a_second_instance_with_the_same_fixed_id_is_refused(
    rabbitmq_url: str, conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    first = Service(f"{queue_name}-single", names=names, instance_id="only")
    second = Service(f"{queue_name}-single", names=names, instance_id="only")
    async with leveret.connect(rabbitmq_url) as other, first.run(conn):
        with pytest.raises(leveret.InstanceAlreadyRunning, match="instance id 'only'"):
            async with second.run(other):
                pass
    await conn.delete_queue(f"{queue_name}-single")


async def test_a_malformed_envelope_is_dead_lettered_with_its_reason(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-robust", names=names)

    @service.method
    async def echo(params: object, ctx: CallContext) -> object:
        return params

    async with service.run(conn), Mesh(conn, names=names) as client:
        for body in (b"not json", b'{"leveret": 9}', b'{"leveret": 1, "kind": "request"}'):
            await conn.publish(
                body, exchange=names.rpc_exchange, routing_key=f"{service.name}.echo"
            )
        reasons = [(await dead_letter(conn, names)).headers["x-leveret-reason"] for _ in range(3)]
        # The service lived on.
        assert await client.call(f"{service.name}.echo", [1, 2], timeout=10) == [1, 2]
    # Handlers run concurrently, so the dead letters may arrive in any order.
    not_json = [reason for reason in reasons if reason.startswith("malformed envelope: not JSON")]
    assert len(not_json) == 1
    assert sorted(set(reasons) - set(not_json)) == [
        "malformed envelope: a request needs service and method",
        "malformed envelope: unknown envelope version 9 (expected 1)",
    ]
    await conn.delete_queue(service.name)


async def test_encrypted_round_trip_and_a_wrong_key_dead_lettered(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    name = f"{queue_name}-vault"
    key = generate_key()
    service = Service(name, names=names, keys=Keys({name: key}))

    @service.method
    async def store(params: dict[str, str], ctx: CallContext) -> dict[str, str]:
        return {"stored": params["secret"]}

    async with service.run(conn):
        async with Mesh(conn, names=names, keys=Keys({name: key})) as client:
            assert await client.call(f"{name}.store", {"secret": "s3cr3t"}, timeout=10) == {
                "stored": "s3cr3t"
            }
        # What travels is sealed: routing metadata clear, the payload not.
        async with Mesh(conn, names=names, keys=Keys({name: generate_key()})) as wrong:
            with pytest.raises(leveret.RemoteError, match="EnvelopeError: cannot decrypt"):
                await wrong.call(f"{name}.store", {"secret": "s3cr3t"}, timeout=10)
            parked = await dead_letter(conn, names)
    envelope = json.loads(parked.body)
    assert envelope["method"] == "store"
    assert "params" not in envelope
    assert "s3cr3t" not in parked.body.decode()
    assert parked.headers["x-leveret-reason"].startswith(
        "malformed envelope: cannot decrypt the request payload (wrong key or altered message"
    )
    await conn.delete_queue(name)


async def test_require_existing_topology(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-strict", names=names, configure=False)
    with pytest.raises(leveret.ServiceNotConfigured, match=f"exchange '{names.rpc_exchange}'"):
        async with service.run(conn):
            pass
    async with Mesh(conn, names=names):  # a configuring client declares the shared part
        pass
    with pytest.raises(leveret.ServiceNotConfigured, match=f"queue '{queue_name}-strict'"):
        async with service.run(conn):
            pass


async def test_describe_is_answered_by_the_service(
    conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-shop", names=names)

    @service.method
    async def buy(params: object, ctx: CallContext) -> None:
        pass

    @service.event("stock.*")
    async def on_stock(payload: object, ctx: CallContext) -> None:
        pass

    async with service.run(conn), Mesh(conn, names=names) as client:
        description = await client.call(f"{service.name}.describe", timeout=10)
    assert description == {
        "service": service.name,
        "methods": ["buy"],
        "events": ["stock.*"],
        "encrypted": False,
    }
    await conn.delete_queue(service.name)


async def test_cli_mesh_call_publish_and_describe(
    rabbitmq_url: str, conn: leveret.Connection, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-cli", names=names)
    events: list[object] = []
    got_event = asyncio.Event()

    @service.method
    async def add(params: dict[str, int], ctx: CallContext) -> int:
        return params["a"] + params["b"]

    @service.event(f"{queue_name}.ping")
    async def on_ping(payload: object, ctx: CallContext) -> None:
        events.append(payload)
        got_event.set()

    mesh_options = [
        "--url", rabbitmq_url,
        "--rpc-exchange", names.rpc_exchange,
        "--events-exchange", names.events_exchange,
        "--dead-letter-exchange", names.dead_letter_exchange,
        "--dead-letter-queue", names.dead_letter_queue,
    ]  # fmt: skip

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "leveret.cli", "mesh", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), BOUND)
        return proc.returncode or 0, out.decode(), err.decode()

    async with service.run(conn):
        code, out, _ = await cli("call", f"{service.name}.add", '{"a": 2, "b": 40}', *mesh_options)
        assert (code, json.loads(out)) == (0, 42)
        code, out, _ = await cli("describe", service.name, *mesh_options)
        assert json.loads(out)["methods"] == ["add"]
        code, _, _ = await cli("publish", f"{queue_name}.ping", '{"n": 1}', *mesh_options)
        assert code == 0
        await asyncio.wait_for(got_event.wait(), BOUND)
        code, _, err = await cli("call", f"{service.name}.nope", *mesh_options)
        assert code == 14  # the CLI's exit code for RemoteError
        assert err.startswith("leveret: RemoteError: LookupError: ")
        await dead_letter(conn, names)  # the unknown method's request
    assert events == [{"n": 1}]
    code, _, err = await cli("call", "x.y", "{bad", *mesh_options)
    assert code == 2
    assert "not JSON" in err
    await conn.delete_queue(service.name)


async def test_a_broker_restart_mid_traffic_loses_no_confirmed_command(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, names: MeshNames, queue_name: str
) -> None:
    service = Service(f"{queue_name}-durable", names=names, prefetch=20)
    handled: Counter[int] = Counter()
    progress = asyncio.Event()
    all_handled = asyncio.Event()
    total = 400

    @service.method
    async def record(params: int, ctx: CallContext) -> None:
        handled[params] += 1
        if len(handled) >= total // 4:
            progress.set()
        if len(handled) == total:
            all_handled.set()

    fast = leveret.Backoff(initial=0.05, maximum=0.5)
    async with (
        leveret.connect(rabbitmq_url, backoff=fast) as server_conn,
        leveret.connect(rabbitmq_url, backoff=fast) as client_conn,
        service.run(server_conn),
        Mesh(client_conn, names=names) as client,
    ):

        async def send(n: int) -> int:
            await client.send_command(f"{service.name}.record", n)
            return n  # returned: the broker confirmed it

        sending = [asyncio.ensure_future(send(n)) for n in range(total)]
        await asyncio.wait_for(progress.wait(), BOUND)
        await asyncio.to_thread(rabbitmq.ctl, "stop_app")
        await asyncio.to_thread(rabbitmq.ctl, "start_app")
        confirmed = set(await asyncio.wait_for(asyncio.gather(*sending), 60))
        await asyncio.wait_for(all_handled.wait(), 60)  # a lost command times this out
    assert confirmed == set(range(total))
    assert confirmed <= set(handled)
    print(
        f"\nservice across a broker restart: sent={total} confirmed={len(confirmed)} "
        f"handled={len(handled)} lost={len(confirmed - set(handled))} "
        f"duplicates={sum(handled.values()) - len(handled)}"
    )
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.delete_queue(service.name)
