#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Receive an app's Tether messages over D-Bus, and send one upstream.

Subscribes for the app, prints each message and acks it once printed, and,
with --send-to, sends one upstream message and prints its outcome. Messages
not acked come again the next time the app subscribes, so a crash between
handling and acking means a message handled twice, never one lost.

Needs dbus-python and PyGObject (Debian: python3-dbus python3-gi):

    ./listen.py --app com.example.weather
    ./listen.py --app com.example.weather --send-to 123456 temp=21 --count 1

The agent must know the app: register it first, for example with
`tetherctl register --app com.example.weather --sender 123456`, or the
Register method. The app ID belongs to the Unix user who registered it
first; run this as that user.
"""

import argparse
import sys

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

NAME = "org.tether.Push"
PATH = "/org/tether/Push"
IFACE = "org.tether.Push1"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True, help="the app ID")
    parser.add_argument(
        "--bus",
        default="system",
        help="system (the default; honours DBUS_SYSTEM_BUS_ADDRESS), session, "
        "or a bus address such as unix:path=/run/dbus/system_bus_socket",
    )
    parser.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    parser.add_argument("--send-to", metavar="SENDER", help="send one upstream message to this sender ID")
    parser.add_argument("--ttl", type=int, default=3600, help="time to live of the upstream message, seconds")
    parser.add_argument("data", nargs="*", metavar="KEY=VALUE", help="data of the upstream message")
    args = parser.parse_args()
    if args.count < 0:
        parser.error("--count must not be negative")
    pairs = {}
    for pair in args.data:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"data must be KEY=VALUE, not {pair!r}")
        pairs[key] = value
    args.data = pairs or {"hello": "tether"}
    return args


def connect(bus):
    if bus == "system":
        return dbus.SystemBus()
    if bus == "session":
        return dbus.SessionBus()
    return dbus.bus.BusConnection(bus)


def show_data(data):
    if not data:
        return "-"
    return " ".join(f"{k}={v}" for k, v in sorted(data.items()))


def main():
    args = parse_args()
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = connect(args.bus)
    push = dbus.Interface(bus.get_object(NAME, PATH), IFACE)
    loop = GLib.MainLoop()
    state = {"received": 0, "exit": 0, "sent_id": None, "results": {}}

    def done(code=0):
        state["exit"] = code
        loop.quit()

    def finished():
        enough = args.count and state["received"] >= args.count
        answered = not args.send_to or state["sent_id"] in state["results"]
        return enough and answered

    # Signals are addressed to this connection alone. bus_name makes
    # dbus-python take them only from the agent's connection, so that no
    # other program on the bus can pass off a message as the agent's.
    def on_message(app, message_id, sender, collapse_key, data, extras):
        if app != args.app:
            return
        if args.count and state["received"] >= args.count:
            return  # not acked: it comes again to the next subscriber
        print(f"message {message_id} from {sender} collapse_key={collapse_key or '-'} data: {show_data(data)}", flush=True)
        try:
            push.Ack(app, [message_id])
        except dbus.exceptions.DBusException as e:
            print(f"ack {message_id}: {e.get_dbus_message()} ({e.get_dbus_name()})", file=sys.stderr, flush=True)
            done(1)
            return
        state["received"] += 1
        if finished():
            done()

    def on_send_result(app, message_id, error):
        if app != args.app:
            return
        state["results"][message_id] = str(error)
        print(f"send_error {message_id}: {error}" if error else f"sent {message_id}", flush=True)
        if finished():
            done()

    def on_deleted(app, count):
        if app == args.app:
            print(f"deleted_messages {count}: fetch what you need from your app server", flush=True)

    def on_token(app, sender, token):
        if app == args.app:
            print(f"token_refreshed {sender}: hand the new token to your app server: {token}", flush=True)

    def on_ended(app, reason):
        if app == args.app:
            print(f"subscription ended: {reason}", file=sys.stderr, flush=True)
            done(1)

    def on_owner(owner):
        if not owner:
            print("the agent left the bus", file=sys.stderr, flush=True)
            done(1)

    for handler, signal in [
        (on_message, "Message"),
        (on_send_result, "SendResult"),
        (on_deleted, "DeletedMessages"),
        (on_token, "TokenRefreshed"),
        (on_ended, "SubscriptionEnded"),
    ]:
        bus.add_signal_receiver(handler, signal_name=signal, dbus_interface=IFACE, bus_name=NAME, path=PATH)

    try:
        # Subscribe first: the outcome of a send goes to the subscriber.
        push.Subscribe(args.app)
        bus.watch_name_owner(NAME, on_owner)
        if args.send_to:
            data = dbus.Dictionary(args.data, signature="ss")
            options = dbus.Dictionary({"ttl": dbus.UInt32(args.ttl)}, signature="sv")
            state["sent_id"] = str(push.Send(args.app, args.send_to, "", data, options))
            print(f"queued {state['sent_id']}", flush=True)
    except dbus.exceptions.DBusException as e:
        print(f"{e.get_dbus_message()} ({e.get_dbus_name()})", file=sys.stderr)
        return 1

    try:
        loop.run()
    except KeyboardInterrupt:
        pass  # what was not acked comes again next time
    return state["exit"]


if __name__ == "__main__":
    sys.exit(main())
