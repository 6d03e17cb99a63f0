// SPDX-License-Identifier: Apache-2.0
// Sends one message with node-gcm, the GCM library many Node app servers
// use, to a Tether connection server, and prints node-gcm's own view of the
// outcome as one JSON line: {"err": ..., "response": ...}.
//
// usage: node node-gcm-send.js URI SERVER_KEY RECIPIENTS_JSON MESSAGE_JSON [OPTIONS_JSON]
//   RECIPIENTS_JSON: a token string, or {"registrationTokens": [...]},
//                    {"topic": "/topics/NAME"} or {"condition": "..."}
//   MESSAGE_JSON: node-gcm Message options, e.g. {"data": {"k": "v"}}
//   OPTIONS_JSON: node-gcm send options; default {"retries": 0}. With
//                 retries, node-gcm retries a 5xx answer, and the tokens
//                 whose result is Unavailable, with exponential backoff.
const gcm = require('node-gcm');

const [uri, key, recipients, message, options] = process.argv.slice(2);
const sender = new gcm.Sender(key, { uri });
const sendOptions = options ? JSON.parse(options) : { retries: 0 };
sender.send(new gcm.Message(JSON.parse(message)), JSON.parse(recipients), sendOptions, (err, response) => {
  const out = { err: err === null ? null : (typeof err === 'number' ? err : String(err.message || err)), response: response || null };
  process.stdout.write(JSON.stringify(out) + '\n');
});
