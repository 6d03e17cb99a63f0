#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""A UnifiedPush connector as the D-Bus specification describes one, for
the end-to-end tests: it owns its application's name, serves
org.unifiedpush.Connector2 and Connector1 at /org/unifiedpush/Connector, and
decrypts what it is pushed as RFC 8291 (aes128gcm) with its own keys.

  up-connector.py register --name NAME --token T --dir D [--vapid KEY] [--version 1|2]
      makes the Web Push keys, registers with the distributor, waits for
      NewEndpoint and prints {"endpoint", "p256dh", "auth"} as JSON.
  up-connector.py serve --name NAME --dir D
      as started by D-Bus activation: records each message (its bytes, and
      what they decrypt to or why not) in D/messages.jsonl, each endpoint in D/endpoints.jsonl and each
      unregistration in D/unregistered.jsonl, until the bus goes away.
  up-connector.py unregister --name NAME --token T [--version 1|2]
      asks the distributor to drop the registration.
The bus is --bus ADDRESS, else DBUS_STARTER_ADDRESS, else the session bus.
"""
import argparse
import base64
import json
import os
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DISTRIBUTOR = "org.unifiedpush.Distributor.tether"
DISTRIBUTOR_PATH = "/org/unifiedpush/Distributor"
CONNECTOR_PATH = "/org/unifiedpush/Connector"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hkdf(salt, ikm, info, length):
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def decrypt(keys, body):
    """RFC 8291 and RFC 8188: one aes128gcm record of a Web Push message."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public = body[21:21 + idlen]
    record = body[21 + idlen:]
    if len(record) > rs:
        raise ValueError("more than one record")
    ua_private = serialization.load_der_private_key(unb64u(keys["private"]), None)
    ua_public = unb64u(keys["p256dh"])
    secret = ua_private.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public))
    ikm = hkdf(unb64u(keys["auth"]), secret, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    plain = AESGCM(cek).decrypt(nonce, record, None).rstrip(b"\x00")
    if not plain.endswith(b"\x02"):
        raise ValueError("no last-record delimiter")
    return plain[:-1]


def record(path, entry):
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Base(dbus.service.Object):
    def __init__(self, bus, args, on_endpoint=None):
        super().__init__(bus, CONNECTOR_PATH)
        self.dir = args.dir
        self.on_endpoint = on_endpoint

    def keys(self):
        with open(os.path.join(self.dir, "keys.json")) as f:
            return json.load(f)

    def message(self, token, body, msgid):
        entry = {"token": token, "id": msgid, "body": base64.b64encode(body).decode()}
        try:
            entry["plaintext"] = decrypt(self.keys(), bytes(body)).decode()
        except Exception as e:  # recorded for the test to show
            entry["error"] = repr(e)
        record(os.path.join(self.dir, "messages.jsonl"), entry)

    def endpoint(self, token, endpoint, version):
        record(os.path.join(self.dir, "endpoints.jsonl"), {"token": token, "endpoint": endpoint, "version": version})
        if self.on_endpoint:
            self.on_endpoint(endpoint)

    def unregistered(self, token, version):
        record(os.path.join(self.dir, "unregistered.jsonl"), {"token": token, "version": version})


class Connector2(Base):
    @dbus.service.method("org.unifiedpush.Connector2", in_signature="a{sv}", out_signature="a{sv}", byte_arrays=True)
    def Message(self, args):
        self.message(str(args["token"]), bytes(args["message"]), str(args.get("id", "")))
        return dbus.Dictionary({"id": args.get("id", "")}, signature="sv")

    @dbus.service.method("org.unifiedpush.Connector2", in_signature="a{sv}", out_signature="a{sv}")
    def NewEndpoint(self, args):
        self.endpoint(str(args["token"]), str(args["endpoint"]), 2)
        return dbus.Dictionary({}, signature="sv")

    @dbus.service.method("org.unifiedpush.Connector2", in_signature="a{sv}", out_signature="a{sv}")
    def Unregistered(self, args):
        self.unregistered(str(args.get("token", "")), 2)
        return dbus.Dictionary({}, signature="sv")


class Connector(Connector2):
    """Both versions: dbus-python finds a member by its Python name along
    the classes, taking the first whose interface is the one called, so
    Connector1's members, of the same names, are on a class of their own."""

    @dbus.service.method("org.unifiedpush.Connector1", in_signature="says", out_signature="", byte_arrays=True)
    def Message(self, token, body, msgid):
        self.message(str(token), bytes(body), str(msgid))

    @dbus.service.method("org.unifiedpush.Connector1", in_signature="ss", out_signature="")
    def NewEndpoint(self, token, endpoint):
        self.endpoint(str(token), str(endpoint), 1)

    @dbus.service.method("org.unifiedpush.Connector1", in_signature="s", out_signature="")
    def Unregistered(self, token):
        self.unregistered(str(token), 1)


def connect(args):
    DBusGMainLoop(set_as_default=True)
    address = args.bus or os.environ.get("DBUS_STARTER_ADDRESS")
    bus = dbus.bus.BusConnection(address) if address else dbus.SessionBus()
    bus.set_exit_on_disconnect(True)
    return bus


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["register", "serve", "unregister"])
    p.add_argument("--name", required=True)
    p.add_argument("--token")
    p.add_argument("--dir")
    p.add_argument("--vapid", default="")
    p.add_argument("--version", type=int, default=2)
    p.add_argument("--bus")
    args = p.parse_args()
    bus = connect(args)
    distributor = bus.get_object(DISTRIBUTOR, DISTRIBUTOR_PATH)

    if args.mode == "unregister":
        if args.version == 1:
            distributor.Unregister(args.token, dbus_interface="org.unifiedpush.Distributor1")
        else:
            distributor.Unregister(dbus.Dictionary({"token": args.token}, signature="sv"), dbus_interface="org.unifiedpush.Distributor2")
        return

    bus.request_name(args.name, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
    loop = GLib.MainLoop()
    if args.mode == "serve":
        Connector(bus, args)
        loop.run()
        return

    key = ec.generate_private_key(ec.SECP256R1())
    keys = {
        "private": b64u(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
        "p256dh": b64u(key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)),
        "auth": b64u(os.urandom(16)),
    }
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "keys.json"), "w") as f:
        json.dump(keys, f)
    got = {}

    def on_endpoint(endpoint):
        got["endpoint"] = endpoint
        loop.quit()

    Connector(bus, args, on_endpoint)
    if args.version == 1:
        result, reason = distributor.Register(args.name, args.token, "end-to-end test", dbus_interface="org.unifiedpush.Distributor1")
    else:
        req = {"service": args.name, "token": args.token, "description": "end-to-end test"}
        if args.vapid:
            req["vapid"] = args.vapid
        res = distributor.Register(dbus.Dictionary(req, signature="sv"), dbus_interface="org.unifiedpush.Distributor2")
        result, reason = str(res.get("success", "")), str(res.get("reason", ""))
    if result != "REGISTRATION_SUCCEEDED":
        sys.exit("registration failed: %s %s" % (result, reason))
    GLib.timeout_add_seconds(60, loop.quit)
    loop.run()
    if "endpoint" not in got:
        sys.exit("no NewEndpoint within 60s")
    print(json.dumps({"endpoint": got["endpoint"], "p256dh": keys["p256dh"], "auth": keys["auth"]}))


if __name__ == "__main__":
    main()
