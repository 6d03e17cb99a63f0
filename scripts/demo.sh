#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Tether end to end on loopback: an app server sends a message down to a
# local app on the device, and the app sends one back up to the app server.
set -euo pipefail

BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. "$(dirname "$0")/demo-lib.sh"

step "Start an app server's webhook (it prints what reaches it)"
"$BIN/webhook-sink" --addr-file "$work/hook.addr" >"$work/webhook.log" 2>&1 & pids+=($!)
wait_for "the webhook" test -s "$work/hook.addr"
hook=$(cat "$work/hook.addr")
echo "webhook at http://$hook/upstream"

step "Make an enrollment key for the device (the server takes no device without one)"
enroll_json=$("$BIN/tether-server" enroll create --data "$work/server" --json)
(umask 077 && json_field key <<<"$enroll_json" >"$work/enroll.key")
echo "enrollment key $(json_field id <<<"$enroll_json"), for one device, in a file of mode 0600"

step "Start the connection server"
"$BIN/tether-server" serve --listen 127.0.0.1:0 --data "$work/server" >"$work/server.log" 2>&1 & pids+=($!)
wait_for "the server to listen" grep -q 'addr=' "$work/server.log"
addr=$(grep -o 'addr=[0-9.:]*' "$work/server.log" | head -1 | cut -d= -f2)
wait_for "the server to be healthy" curl -fsS "http://$addr/healthz"
echo "tether-server at http://$addr"

step "Create a sender (the app server's identity)"
sender_json=$("$BIN/tether-server" sender add --data "$work/server" --name demo --webhook "http://$hook/upstream" --json)
sender=$(json_field sender_id <<<"$sender_json")
key=$(json_field server_key <<<"$sender_json")
echo "sender ID $sender (its server key stays with the app server)"

step "Start the device agent"
sock="$work/tetherd.sock"
"$BIN/tetherd" --server "ws://$addr" --data "$work/agent" --socket "$sock" --enroll-key-file "$work/enroll.key" \
  >"$work/agent.log" 2>&1 & pids+=($!)
ctl() { "$BIN/tetherctl" --socket "$sock" "$@"; }
wait_for "the agent to connect" sh -c "'$BIN/tetherctl' --socket '$sock' status --json | grep -q '\"connected\": *true'"
ctl status
echo "the server's list of devices:"
"$BIN/tether-server" device list --data "$work/server"

step "Register a local app"
app=com.example.demo
token=$(ctl register --app "$app" --sender "$sender")
echo "registration token ${token:0:16}... (${#token} characters)"

step "The app listens; the app server sends a message down with curl"
ctl listen --app "$app" --count 1 >"$work/listen.out" 2>"$work/listen.log" & listener=$!
body=$(printf '{"to": "%s", "collapse_key": "greeting", "time_to_live": 3600, "data": {"greeting": "hello from the app server"}}' "$token")
echo "POST /gcm/send"
curl -fsS -H "Authorization: key=$key" -H 'Content-Type: application/json' -d "$body" "http://$addr/gcm/send"
echo
wait_for "the message to reach the app" test -s "$work/listen.out"
wait "$listener" || fail "tetherctl listen failed"
echo "the app received:"
cat "$work/listen.out"

step "The app sends a message up; the webhook receives it"
ctl send --app "$app" --to "$sender" --wait reply="hello from the device"
wait_for "the webhook to receive it" grep -q 'hello from the device' "$work/webhook.log"
echo "the app server received:"
grep 'webhook' "$work/webhook.log"

step "Done: one message down, one message up"
