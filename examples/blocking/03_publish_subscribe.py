"""Tutorial 3, "Publish/Subscribe", blocking style: deliver a message to every receiver.

emit_log publishes to the fanout exchange "logs"; each receive_logs listens on it with
`conn.listen("logs")`: a private, server-named queue bound to the exchange for as long
as the block runs (deleted after), so every running receiver gets every line.
"""

import argparse
import contextlib
import os

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def emit_log(message: str) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_exchange("logs", "fanout")
        conn.publish(message, exchange="logs")  # a str goes out as UTF-8 text
        print(f" [x] Sent {message!r}")


def receive_logs(count: int | None) -> None:
    with (
        leveret.blocking.connect(URL) as conn,
        conn.listen("logs") as messages,  # declares the exchange and a private queue
    ):
        print(" [*] Waiting for logs. To exit press CTRL+C")
        for received, msg in enumerate(messages, start=1):
            print(f" [x] {msg.text()}")
            msg.ack()
            if received == count:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    emit = sub.add_parser("emit_log")
    emit.add_argument("message", nargs="*")
    receive = sub.add_parser("receive_logs")
    receive.add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "emit_log":
            emit_log(" ".join(args.message) or "info: Hello World!")
        else:
            receive_logs(args.count)
