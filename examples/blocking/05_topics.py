"""Tutorial 5, "Topics", blocking style: route on patterns of dot-separated words.

In a binding key, "*" matches exactly one word and "#" matches zero or more:
"kern.*" gets kern.info but not kern.disk.critical; "kern.#" gets both.
"""

import argparse
import contextlib
import os

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def emit_log_topic(routing_key: str, message: str) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_exchange("topic_logs", "topic")
        conn.publish(message, exchange="topic_logs", routing_key=routing_key)
        print(f" [x] Sent {routing_key}:{message!r}")


def receive_logs_topic(binding_keys: list[str], count: int | None) -> None:
    with (
        leveret.blocking.connect(URL) as conn,
        conn.listen("topic_logs", "topic", routing_keys=binding_keys) as messages,
    ):
        print(" [*] Waiting for logs. To exit press CTRL+C")
        for received, msg in enumerate(messages, start=1):
            print(f" [x] {msg.routing_key}:{msg.text()!r}")
            msg.ack()
            if received == count:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    emit = sub.add_parser("emit_log_topic")
    emit.add_argument("routing_key", nargs="?", default="anonymous.info")
    emit.add_argument("message", nargs="*")
    receive = sub.add_parser("receive_logs_topic")
    receive.add_argument("binding_keys", nargs="+", metavar="binding_key", help='e.g. "kern.*"')
    receive.add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "emit_log_topic":
            emit_log_topic(args.routing_key, " ".join(args.message) or "Hello World!")
        else:
            receive_logs_topic(args.binding_keys, args.count)
