"""Tutorial 6, "RPC": call a function on another process and wait for the answer.

rpc_server answers fibonacci requests on "rpc_queue" with conn.serve(); rpc_client sends
them with conn.call(), concurrently, each bounded by a timeout.
"""

import argparse
import asyncio
import contextlib
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def rpc_server(count: int | None) -> None:
    answered = 0
    finished = asyncio.Event()

    async def on_request(request: leveret.Message) -> bytes:
        nonlocal answered
        n = int(request.body)
        print(f" [.] fib({n})")
        answered += 1
        if answered == count:
            finished.set()  # leaving conn.serve() still sends this reply
        return str(fib(n)).encode()

    async with leveret.connect(URL) as conn:
        await conn.declare_queue("rpc_queue")
        async with conn.serve("rpc_queue", on_request):
            print(" [x] Awaiting RPC requests")
            await finished.wait()


async def rpc_client(numbers: list[int], timeout: float) -> bool:
    async with leveret.connect(URL) as conn:

        async def call_fib(n: int) -> bool:
            print(f" [x] Requesting fib({n})")
            try:
                reply = await conn.call("rpc_queue", str(n).encode(), timeout=timeout)
            except leveret.MessageReturned:  # no queue to route the request to
                print(f" [!] fib({n}): nobody serves rpc_queue, start rpc_server first")
                return False
            except leveret.RPCTimeout:
                print(f" [!] fib({n}): no reply within {timeout} s")
                return False
            print(f" [.] Got fib({n})={reply.text()}")
            return True

        return all(await asyncio.gather(*(call_fib(n) for n in numbers)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("rpc_server")
    server.add_argument("--count", type=int, help="exit after answering COUNT requests")
    client = sub.add_parser("rpc_client")
    client.add_argument("numbers", nargs="*", type=int, default=[30])
    client.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "rpc_server":
            asyncio.run(rpc_server(args.count))
        elif not asyncio.run(rpc_client(args.numbers, args.timeout)):
            raise SystemExit(1)
