"""Tutorial 4, "Routing", blocking style: receive only a subset of the messages.

emit_log_direct publishes to a direct exchange with the severity as routing key;
receive_logs_direct listens with one binding per severity it wants
(`conn.listen(exchange, "direct", routing_keys=severities)`).
"""

import argparse
import contextlib
import os

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def emit_log_direct(severity: str, message: str) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_exchange("direct_logs", "direct")
        conn.publish(message, exchange="direct_logs", routing_key=severity)
        print(f" [x] Sent {severity}:{message!r}")


def receive_logs_direct(severities: list[str], count: int | None) -> None:
    with (
        leveret.blocking.connect(URL) as conn,
        conn.listen("direct_logs", "direct", routing_keys=severities) as messages,
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
    emit = sub.add_parser("emit_log_direct")
    emit.add_argument("severity", nargs="?", default="info")
    emit.add_argument("message", nargs="*")
    receive = sub.add_parser("receive_logs_direct")
    receive.add_argument("severities", nargs="+", metavar="severity", help="info, warning, error")
    receive.add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "emit_log_direct":
            emit_log_direct(args.severity, " ".join(args.message) or "Hello World!")
        else:
            receive_logs_direct(args.severities, args.count)
