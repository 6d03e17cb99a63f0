#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Tether as a cluster on one machine, with the commands README gives: three
# NATS JetStream servers, three tether-server nodes on them, and an agent
# that knows every node. A message goes down through one node to the device
# on another, one comes up; then the device's node is killed, and the agent
# carries on with another.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$root/bin}
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-cluster-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" /tmp/tether-cluster
}
trap cleanup EXIT

WAIT_TENTHS=600 # a cluster elects its leaders first
. "$(dirname "$0")/demo-lib.sh"

step "Start three NATS JetStream servers (examples/cluster)"
rm -rf /tmp/tether-cluster
for i in 1 2 3; do
  "$BIN/nats-server" -c "$root/examples/cluster/nats-$i.conf" >"$work/nats-$i.log" 2>&1 & pids+=($!)
done
NATS=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
echo "NATS=$NATS"

step "Make an enrollment key in the cluster's state, for the device"
enroll_json=$("$BIN/tether-server" enroll create --nats "$NATS" --json)
(umask 077 && json_field key <<<"$enroll_json" >"$work/enroll.key")
echo "enrollment key $(json_field id <<<"$enroll_json")"

step "Start three tether-server nodes on them"
"$BIN/webhook-sink" --addr-file "$work/hook.addr" >"$work/webhook.log" 2>&1 & pids+=($!)
wait_for "the webhook" test -s "$work/hook.addr"
hook=$(cat "$work/hook.addr")
node_pids=()
for i in 1 2 3; do
  "$BIN/tether-server" serve --nats "$NATS" --data "$work/node-$i" --listen "127.0.0.1:808$i" \
    --public-url "ws://127.0.0.1:808$i" >"$work/node-$i.log" 2>&1 & pids+=($!); node_pids+=($!)
done
for i in 1 2 3; do
  wait_for "node $i to be healthy" curl -fsS "http://127.0.0.1:808$i/healthz"
  echo "node $i at http://127.0.0.1:808$i"
done

step "Create a sender in the cluster's state, with no node involved"
sender_json=$("$BIN/tether-server" sender add --nats "$NATS" --name demo --webhook "http://$hook/upstream" --json)
sender=$(json_field sender_id <<<"$sender_json")
key=$(json_field server_key <<<"$sender_json")
echo "sender ID $sender"

step "Start a device agent that knows every node"
sock="$work/tetherd.sock"
"$BIN/tetherd" --server ws://127.0.0.1:8081,ws://127.0.0.1:8082,ws://127.0.0.1:8083 \
  --data "$work/agent" --socket "$sock" --enroll-key-file "$work/enroll.key" \
  --min-backoff 1s --max-backoff 3s >"$work/agent.log" 2>&1 & pids+=($!)
ctl() { "$BIN/tetherctl" --socket "$sock" "$@"; }
connected() { ctl status --json | grep -q '"connected": *true'; }
wait_for "the agent to connect" connected
node=$(ctl status --json | sed -n 's/.*"server": *"ws:\/\/127.0.0.1:808\([123]\).*/\1/p')
echo "the agent is on node $node"
app=com.example.demo
token=$(ctl register --app "$app" --sender "$sender")

step "A message down, sent through another node than the device's"
other=$(( node % 3 + 1 ))
ctl listen --app "$app" --count 2 >"$work/listen.out" 2>"$work/listen.log" & listener=$!
body=$(printf '{"to": "%s", "data": {"greeting": "hello through node %s"}}' "$token" "$other")
curl -fsS -H "Authorization: key=$key" -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:808$other/gcm/send"
echo
wait_for "the message to reach the app" grep -q "hello through node $other" "$work/listen.out"
cat "$work/listen.out"

step "A message up; the webhook receives it once"
ctl send --app "$app" --to "$sender" --wait reply="hello from the device"
wait_for "the webhook to receive it" grep -q 'hello from the device' "$work/webhook.log"
grep 'webhook' "$work/webhook.log"

step "Kill the device's node; the agent reaches another"
kill -9 "${node_pids[$((node - 1))]}"
wait_for "the agent to move" sh -c "! '$BIN/tetherctl' --socket '$sock' status --json | grep -q '127.0.0.1:808$node'"
wait_for "the agent to connect again" connected
now=$(ctl status --json | sed -n 's/.*"server": *"ws:\/\/127.0.0.1:808\([123]\).*/\1/p')
echo "the agent is on node $now"
body=$(printf '{"to": "%s", "data": {"greeting": "hello after node %s died"}}' "$token" "$node")
curl -fsS -H "Authorization: key=$key" -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:808$now/gcm/send"
echo
wait_for "the second message to reach the app" grep -q "hello after node $node died" "$work/listen.out"
wait "$listener" || fail "tetherctl listen failed"
tail -1 "$work/listen.out"

step "Done: a cluster of three nodes, one of them lost, nothing lost"
