// SPDX-License-Identifier: Apache-2.0

// Package network watches the device's default route: whether there is
// one, and which network it leads to. The agent uses it to stop dialling
// while there is no route, to reconnect at once when one appears or
// changes, and to keep what it learns per network (such as how long an
// idle connection survives there) under the network's identity.
//
// It listens to the kernel's rtnetlink notifications for links,
// addresses and routes, and after each burst of them reads the routing
// table again; nothing is polled. It can watch another network namespace
// than its own.
//
// It says nothing about whether the route leads anywhere useful: reaching
// the connection server is the agent's to find out.
package network
