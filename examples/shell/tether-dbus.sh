#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Talk to the Tether agent over D-Bus from the shell, with busctl.
#
#   tether-dbus.sh APP SENDER [KEY=VALUE...]
#
# registers APP with SENDER and prints its token, shows the agent's state,
# and sends KEY=VALUE... upstream to SENDER, printing the message ID. Set
# TETHER_DBUS to "session" or to a bus address (unix:path=...) to use
# another bus than the system bus.
#
# A shell cannot stay subscribed: a subscription lives as long as the
# connection that made it, and each busctl call is a connection of its
# own. To receive messages, use examples/python/listen.py or
# `tetherctl --dbus system listen --app APP`.
set -eu

if [ $# -lt 2 ]; then
	echo "usage: $0 APP SENDER [KEY=VALUE...]" >&2
	exit 2
fi
app=$1
sender=$2
shift 2

case "${TETHER_DBUS:-system}" in
system) bus=--system ;;
session) bus=--user ;;
*) bus=--address=$TETHER_DBUS ;;
esac

push() {
	busctl "$bus" call org.tether.Push /org/tether/Push org.tether.Push1 "$@"
}

# Register(s app, s sender) -> s token; busctl prints: s "TOKEN"
token=$(push Register ss "$app" "$sender" | sed 's/^s "\(.*\)"$/\1/')
echo "token $token"

# The agent's state, as properties.
busctl "$bus" get-property org.tether.Push /org/tether/Push org.tether.Push1 Connected DeviceID PowerMode

# Send(s app, s to, s message_id, a{ss} data, a{sv} options) -> s message_id.
# busctl takes a dictionary as its number of entries, then key and value
# of each; a variant as its type, then its value. An empty message_id asks
# the agent to make one.
n=$#
for pair in "$@"; do
	case $pair in
	?*=*) set -- "$@" "${pair%%=*}" "${pair#*=}" ;;
	*) echo "data must be KEY=VALUE, not '$pair'" >&2; exit 2 ;;
	esac
done
shift "$n"
id=$(push Send 'sssa{ss}a{sv}' "$app" "$sender" "" "$n" "$@" 1 ttl u 3600 | sed 's/^s "\(.*\)"$/\1/')
echo "queued $id"
