// Sends one message with node-gcm, the GCM library many Node app servers
// use, to a Tether connection server, and prints node-gcm's own view of the
// outcome as one JSON line: {"err": ..., "response": ...}.
//
// usage: node node-gcm-send.js URI SERVER_KEY RECIPIENTS_JSON MESSAGE_JSON
//   RECIPIENTS_JSON: a token string, or {"registrationTokens": [...]}
//   MESSAGE_JSON: node-gcm Message options, e.g. {"data": {"k": "v"}}
const gcm = require('node-gcm');

const [uri, key, recipients, message] = process.argv.slice(2);
const sender = new gcm.Sender(key, { uri });
sender.send(new gcm.Message(JSON.parse(message)), JSON.parse(recipients), { retries: 0 }, (err, response) => {
  const out = { err: err === null ? null : (typeof err === 'number' ? err : String(err.message || err)), response: response || null };
  process.stdout.write(JSON.stringify(out) + '\n');
});
