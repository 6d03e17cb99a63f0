// SPDX-License-Identifier: Apache-2.0
// An app server on tether-server's XMPP (CCS) endpoint, written the way
// GCM's CCS guides showed, with the unchanged @xmpp/client library.
//
//   node xmpp-ccs.js SERVICE SENDER_ID SERVER_KEY
//
// SERVICE is xmpps://HOST:PORT; NODE_EXTRA_CA_CERTS names the CA to trust.
// Lines on stdin are JSON commands: {"op": "send", "message": {...}} sends
// a downstream message, {"op": "ack_upstream", "on": false} stops acking
// upstream messages and receipts, {"op": "stop"} disconnects. Every stanza
// from the server is printed on stdout as one JSON line,
// {"event": "stanza", "gcm": {...}}, and each ack this client sends as
// {"event": "acked", "message_id": ...}.
"use strict";

const { client, xml } = require("@xmpp/client");
const readline = require("readline");

const [service, senderID, serverKey] = process.argv.slice(2);
if (!serverKey) {
  console.error("usage: node xmpp-ccs.js xmpps://HOST:PORT SENDER_ID SERVER_KEY");
  process.exit(2);
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const xmpp = client({
  service,
  domain: "gcm.googleapis.com",
  username: senderID,
  password: serverKey,
});

let ackUpstream = true;
let nextID = 0;

function sendGCM(obj) {
  return xmpp.send(
    xml("message", { id: "s" + nextID++ }, xml("gcm", { xmlns: "google:mobile:data" }, JSON.stringify(obj))),
  );
}

xmpp.on("error", (err) => print({ event: "error", error: String(err && err.message ? err.message : err) }));
xmpp.on("offline", () => print({ event: "offline" }));
xmpp.on("online", (jid) => print({ event: "online", jid: jid.toString() }));

xmpp.on("stanza", async (stanza) => {
  if (!stanza.is("message")) return;
  const gcm = stanza.getChild("gcm", "google:mobile:data");
  if (!gcm) return;
  const msg = JSON.parse(gcm.text());
  print({ event: "stanza", gcm: msg });
  const type = msg.message_type;
  // Upstream messages (no type) and receipts must be acked, as on GCM.
  if (ackUpstream && (type === undefined || type === "receipt")) {
    await sendGCM({ to: msg.from, message_id: msg.message_id, message_type: "ack" });
    print({ event: "acked", message_id: msg.message_id });
  }
});

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  const cmd = JSON.parse(line);
  switch (cmd.op) {
    case "send":
      await sendGCM(cmd.message);
      break;
    case "ack_upstream":
      ackUpstream = cmd.on;
      break;
    case "stop":
      await xmpp.stop();
      process.exit(0);
  }
});

xmpp.start().catch((err) => {
  print({ event: "error", error: String(err.message || err) });
  process.exit(1);
});
