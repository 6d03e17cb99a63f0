/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tether-listen: receive an app's Tether messages over D-Bus with sd-bus
 * (libsystemd), and ack each one once it is handled.
 *
 *   tether-listen --app APP [--sender SENDER] [--count N] [--bus ADDRESS]
 *
 * With --sender it first registers the app for that sender ID and prints
 * "token TOKEN": hand the token to the app server. It then subscribes,
 * prints "listening for APP", and for each message prints "message ID
 * from FROM data: KEY=VALUE ..." and acks it only after printing it: a
 * message not acked comes again the next time the app subscribes, so a
 * crash between handling and acking means a message handled twice, never
 * one lost. With --count N it exits after N messages; it exits 1 when the
 * agent ends the subscription or leaves the bus.
 *
 * --bus is a bus address (unix:path=...); the default is the system bus.
 * The interface is /usr/share/dbus-1/interfaces/org.tether.Push1.xml.
 *
 * Build: cc -o tether-listen tether-listen.c $(pkg-config --cflags --libs libsystemd)
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

#define NAME "org.tether.Push"
#define PATH "/org/tether/Push"
#define IFACE "org.tether.Push1"

struct state {
	const char *app;
	long count;    /* 0: no limit */
	long received;
	int exit_code; /* -1 while running */
};

static int fail(const char *what, const sd_bus_error *error, int r)
{
	if (error != NULL && sd_bus_error_is_set(error))
		fprintf(stderr, "%s: %s (%s)\n", what, error->message, error->name);
	else
		fprintf(stderr, "%s: %s\n", what, strerror(-r));
	return r;
}

/* print_data prints the message's data, a{ss}, as KEY=VALUE pairs. */
static int print_data(sd_bus_message *m)
{
	const char *key, *value;
	int r, any = 0;

	r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{ss}");
	if (r < 0)
		return r;
	while ((r = sd_bus_message_read(m, "{ss}", &key, &value)) > 0) {
		printf(" %s=%s", key, value);
		any = 1;
	}
	if (r < 0)
		return r;
	if (!any)
		printf(" -");
	return sd_bus_message_exit_container(m);
}

/* on_message handles the Message signal: app, message_id, from,
 * collapse_key, data a{ss}, extras a{sv}. */
static int on_message(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
	struct state *st = userdata;
	sd_bus_error error = SD_BUS_ERROR_NULL;
	const char *app, *id, *from, *collapse_key;
	int r;

	(void)ret_error;
	r = sd_bus_message_read(m, "ssss", &app, &id, &from, &collapse_key);
	if (r < 0)
		return fail("read a Message signal", NULL, r);
	if (strcmp(app, st->app) != 0)
		return 0;
	if (st->count > 0 && st->received >= st->count)
		return 0; /* not acked: it comes again to the next subscriber */

	printf("message %s from %s collapse_key=%s data:", id, from, collapse_key[0] ? collapse_key : "-");
	r = print_data(m);
	printf("\n");
	fflush(stdout);
	if (r < 0)
		return fail("read the message's data", NULL, r);

	/* Handled: now, and only now, ack it. */
	r = sd_bus_call_method(sd_bus_message_get_bus(m), NAME, PATH, IFACE, "Ack", &error, NULL,
			       "sas", st->app, 1, id);
	if (r < 0) {
		fail("ack", &error, r);
		sd_bus_error_free(&error);
		st->exit_code = 1;
		return 0;
	}
	st->received++;
	if (st->count > 0 && st->received >= st->count)
		st->exit_code = 0;
	return 0;
}

static int on_ended(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
	struct state *st = userdata;
	const char *app, *reason;

	(void)ret_error;
	if (sd_bus_message_read(m, "ss", &app, &reason) < 0 || strcmp(app, st->app) != 0)
		return 0;
	fprintf(stderr, "subscription ended: %s\n", reason);
	st->exit_code = 1;
	return 0;
}

/* on_owner ends the loop when the agent leaves the bus. */
static int on_owner(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
	struct state *st = userdata;
	const char *name, *old_owner, *new_owner;

	(void)ret_error;
	if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) >= 0 && strcmp(name, NAME) == 0 &&
	    new_owner[0] == '\0') {
		fprintf(stderr, "the agent left the bus\n");
		st->exit_code = 1;
	}
	return 0;
}

static int connect_bus(const char *address, sd_bus **bus)
{
	int r;

	if (address == NULL)
		return sd_bus_open_system(bus);
	r = sd_bus_new(bus);
	if (r < 0)
		return r;
	r = sd_bus_set_address(*bus, address);
	if (r >= 0)
		r = sd_bus_set_bus_client(*bus, 1);
	if (r >= 0)
		r = sd_bus_start(*bus);
	return r;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tether-listen --app APP [--sender SENDER] [--count N] [--bus ADDRESS]\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"app", required_argument, NULL, 'a'},
		{"sender", required_argument, NULL, 's'},
		{"count", required_argument, NULL, 'c'},
		{"bus", required_argument, NULL, 'b'},
		{"help", no_argument, NULL, 'h'},
		{0},
	};
	struct state st = {.exit_code = -1};
	const char *sender = NULL, *address = NULL, *owner, *token;
	sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *reply = NULL;
	sd_bus *bus = NULL;
	char *end;
	int r, opt;

	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'a': st.app = optarg; break;
		case 's': sender = optarg; break;
		case 'b': address = optarg; break;
		case 'c':
			errno = 0;
			st.count = strtol(optarg, &end, 10);
			if (errno != 0 || *end != '\0' || st.count < 0) {
				fprintf(stderr, "--count must be a number of messages, 0 or more, not %s\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (st.app == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}

	r = connect_bus(address, &bus);
	if (r < 0)
		return fail("connect to the bus", NULL, r), 1;

	if (sender != NULL) {
		r = sd_bus_call_method(bus, NAME, PATH, IFACE, "Register", &error, &reply, "ss", st.app, sender);
		if (r < 0 || (r = sd_bus_message_read(reply, "s", &token)) < 0)
			return fail("register", &error, r), 1;
		printf("token %s\n", token);
		fflush(stdout);
		reply = sd_bus_message_unref(reply);
	}

	/* Signals come to this connection alone; matching on the agent's
	 * unique name takes them only from the agent, so that no other
	 * program on the bus can pass off a message as its. */
	r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
			       "GetNameOwner", &error, &reply, "s", NAME);
	if (r < 0 || (r = sd_bus_message_read(reply, "s", &owner)) < 0)
		return fail("find the agent on the bus", &error, r), 1;
	r = sd_bus_match_signal(bus, NULL, owner, PATH, IFACE, "Message", on_message, &st);
	if (r >= 0)
		r = sd_bus_match_signal(bus, NULL, owner, PATH, IFACE, "SubscriptionEnded", on_ended, &st);
	if (r >= 0)
		r = sd_bus_add_match(bus, NULL,
				     "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
				     "member='NameOwnerChanged',arg0='" NAME "'",
				     on_owner, &st);
	if (r < 0)
		return fail("add the signal matches", NULL, r), 1;
	reply = sd_bus_message_unref(reply);

	r = sd_bus_call_method(bus, NAME, PATH, IFACE, "Subscribe", &error, NULL, "s", st.app);
	if (r < 0)
		return fail("subscribe", &error, r), 1;
	printf("listening for %s\n", st.app);
	fflush(stdout);

	while (st.exit_code < 0) {
		r = sd_bus_process(bus, NULL);
		if (r < 0)
			return fail("read the bus", NULL, r), 1;
		if (r > 0)
			continue;
		r = sd_bus_wait(bus, UINT64_MAX);
		if (r < 0 && r != -EINTR)
			return fail("wait on the bus", NULL, r), 1;
	}
	sd_bus_flush_close_unref(bus);
	return st.exit_code;
}
