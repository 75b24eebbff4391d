"""Tutorial 3, "Publish/Subscribe", blocking style: deliver a message to every receiver.

emit_log publishes to the fanout exchange "logs"; each receive_logs binds a private,
server-named queue to it, so every running receiver gets every line.
"""

import argparse
import contextlib
import os

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def emit_log(message: str) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_exchange("logs", "fanout")
        conn.publish(message.encode(), exchange="logs")
        print(f" [x] Sent {message!r}")


def receive_logs(count: int | None) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_exchange("logs", "fanout")
        queue = conn.declare_queue("", exclusive=True)  # a fresh, private queue
        conn.bind_queue(queue.name, "logs")
        with conn.consume(queue.name, no_ack=True) as messages:
            print(" [*] Waiting for logs. To exit press CTRL+C")
            for received, msg in enumerate(messages, start=1):
                print(f" [x] {msg.text()}")
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
