"""Tutorial 6, "RPC", blocking style: call a function on another process and wait for the answer.

rpc_server answers fibonacci requests on "rpc_queue" with conn.serve(), the handler a plain
function run in worker threads; rpc_client sends them with conn.call() from several threads
at once (one connection is safe to share), each bounded by a timeout.
"""

import argparse
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:  # whole lines, even from several threads at once
        print(line)


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def rpc_server(count: int | None) -> None:
    answered = 0
    lock = threading.Lock()
    finished = threading.Event()

    def on_request(request: leveret.blocking.Message) -> bytes:
        nonlocal answered
        n = int(request.body)
        say(f" [.] fib({n})")
        with lock:
            answered += 1
            if answered == count:
                finished.set()  # leaving conn.serve() still sends this reply
        return str(fib(n)).encode()

    with leveret.blocking.connect(URL) as conn:
        conn.declare_queue("rpc_queue")
        if count is None:
            say(" [x] Awaiting RPC requests")
            conn.serve_forever("rpc_queue", on_request)  # until Ctrl-C
            return
        with conn.serve("rpc_queue", on_request):
            say(" [x] Awaiting RPC requests")
            finished.wait()


def rpc_client(numbers: list[int], timeout: float) -> bool:
    with leveret.blocking.connect(URL) as conn:

        def call_fib(n: int) -> bool:
            say(f" [x] Requesting fib({n})")
            try:
                reply = conn.call("rpc_queue", str(n).encode(), timeout=timeout)
            except leveret.MessageReturned:  # no queue to route the request to
                say(f" [!] fib({n}): nobody serves rpc_queue, start rpc_server first")
                return False
            except leveret.RPCTimeout:
                say(f" [!] fib({n}): no reply within {timeout} s")
                return False
            say(f" [.] Got fib({n})={reply.text()}")
            return True

        with ThreadPoolExecutor(max_workers=max(1, len(numbers))) as pool:
            return all(pool.map(call_fib, numbers))


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
            rpc_server(args.count)
        elif not rpc_client(args.numbers, args.timeout):
            raise SystemExit(1)
