"""Delayed retry and a parking lot: handlers that fail are tried again later, then set aside.

A worker subscribes with `retry=leveret.Retry(delays=...)`: a handler that raises has its
message retried after each delay (through TTL'd retry queues, no plugin) and parked in
"orders.parked" after the last attempt. Nothing is lost and nothing loops forever.
"""

import argparse
import asyncio
import contextlib
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def main(delays: tuple[float, ...]) -> None:
    retry = leveret.Retry(delays=delays)
    orders = {"order-1": "ok", "order-2": "flaky", "order-3": "broken"}
    outcomes: dict[str, str] = {}
    all_settled = asyncio.Event()

    def settle(order_id: str, outcome: str) -> None:
        outcomes[order_id] = outcome
        if len(outcomes) == len(orders):
            all_settled.set()

    async def handle(msg: leveret.Message) -> None:
        order = msg.json()
        print(f" [x] {order['id']} ({order['kind']}), attempt {msg.attempt}")
        if order["kind"] == "broken" or (order["kind"] == "flaky" and msg.attempt < 3):
            raise RuntimeError(f"cannot process {order['id']} yet")
        settle(order["id"], f"done on attempt {msg.attempt}")

    async def watch_parked(msg: leveret.Message) -> None:
        settle(msg.json()["id"], f"parked: {msg.headers['x-leveret-error']}")

    async with leveret.connect(URL) as conn:
        await conn.declare_queue("orders", durable=True)
        await conn.purge_queue("orders")
        async with (
            conn.subscribe("orders", handle, concurrency=4, retry=retry),
            conn.subscribe(retry.parking_queue("orders"), watch_parked),
        ):
            for order_id, kind in orders.items():
                await conn.publish({"id": order_id, "kind": kind}, routing_key="orders")
            await all_settled.wait()
    for order_id in orders:
        print(f" [=] {order_id}: {outcomes.get(order_id, 'unfinished')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--delays", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="seconds between tries"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(tuple(parser.parse_args().delays)))
