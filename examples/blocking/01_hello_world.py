"""Tutorial 1, "Hello World!", blocking style: send a message to a named queue and receive it.

Run `python examples/blocking/01_hello_world.py receive` in one terminal,
then `python examples/blocking/01_hello_world.py send` in another.
"""

import argparse
import contextlib
import os

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def send() -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_queue("hello")
        conn.publish(b"Hello World!", routing_key="hello")  # returns once the broker has it
        print(" [x] Sent 'Hello World!'")


def receive(count: int | None) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_queue("hello")
        with conn.consume("hello") as messages:
            print(" [*] Waiting for messages. To exit press CTRL+C")
            for received, msg in enumerate(messages, start=1):
                print(f" [x] Received {msg.text()!r}")
                msg.ack()
                if received == count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("send")
    sub.add_parser("receive").add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "send":
            send()
        else:
            receive(args.count)
