// SPDX-License-Identifier: Apache-2.0
// npm's web-push library, unchanged, for the end-to-end tests.
//   node web-push-send.js keys
//     prints a new VAPID key pair: {"publicKey", "privateKey"}
//   node web-push-send.js send SUBSCRIPTION VAPID PAYLOAD [OPTIONS]
//     encrypts PAYLOAD (aes128gcm) for SUBSCRIPTION ({"endpoint", "keys":
//     {"p256dh", "auth"}}), signs with VAPID ({"subject", "publicKey",
//     "privateKey"}) and posts it; prints {"statusCode", "headers"} or
//     {"error", "statusCode", "body"}. OPTIONS are web-push's (TTL, urgency,
//     topic).
// The push service's certificate is trusted through NODE_EXTRA_CA_CERTS.
const webpush = require('web-push');

const [mode, ...args] = process.argv.slice(2);
if (mode === 'keys') {
  console.log(JSON.stringify(webpush.generateVAPIDKeys()));
} else if (mode === 'send') {
  const [subscription, vapid, payload, options] = args;
  webpush.sendNotification(JSON.parse(subscription), payload, {
    vapidDetails: JSON.parse(vapid),
    contentEncoding: 'aes128gcm',
    TTL: 3600,
    ...JSON.parse(options || '{}'),
  }).then(
    (r) => console.log(JSON.stringify({ statusCode: r.statusCode, headers: r.headers })),
    (e) => console.log(JSON.stringify({ error: e.message, statusCode: e.statusCode, body: e.body })),
  );
} else {
  console.error('usage: web-push-send.js keys | send SUBSCRIPTION VAPID PAYLOAD [OPTIONS]');
  process.exit(2);
}
