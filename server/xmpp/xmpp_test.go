// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestNewChecksConfig(t *testing.T) {
	ok := Config{
		Domains:      []string{"gcm.googleapis.com"},
		Authenticate: func(context.Context, net.Addr, string, string, string) error { return nil },
		Open:         func(*Conn) Handler { return nil },
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no domains", func(c *Config) { c.Domains = nil }},
		{"empty domain", func(c *Config) { c.Domains = []string{"gcm.googleapis.com", " "} }},
		{"domain with @", func(c *Config) { c.Domains = []string{"1@gcm.googleapis.com"} }},
		{"no Authenticate", func(c *Config) { c.Authenticate = nil }},
		{"no Open", func(c *Config) { c.Open = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mod(&cfg)
			if _, err := New(cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
	s, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.IdleTimeout != DefaultIdleTimeout || s.cfg.MaxStanzaSize != DefaultMaxStanzaSize || s.cfg.SendQueue != DefaultSendQueue {
		t.Errorf("defaults not filled in: %+v", s.cfg)
	}
}

func TestAuthentication(t *testing.T) {
	h := startServer(t)
	for _, tc := range []struct {
		name     string
		to       string // the stream header's
		auth     string // the <auth/> element
		failure  string // SASL failure condition, "" for success
		domain   string // Conn.Domain on success
		wantCall bool   // Authenticate is asked
	}{
		{"gcm domain", "gcm.googleapis.com", plainAuth("", testUser+"@gcm.googleapis.com", testPassword), "", "gcm.googleapis.com", true},
		{"fcm domain", "gcm.googleapis.com", plainAuth("", testUser+"@fcm.googleapis.com", testPassword), "", "fcm.googleapis.com", true},
		{"own domain in capitals", "push.example.com", plainAuth("", testUser+"@Push.Example.COM", testPassword), "", "push.example.com", true},
		{"bare user takes the stream's domain", "fcm.googleapis.com", plainAuth("", testUser, testPassword), "", "fcm.googleapis.com", true},
		{"authzid equal to authcid", "gcm.googleapis.com", plainAuth(testUser+"@gcm.googleapis.com", testUser+"@gcm.googleapis.com", testPassword), "", "gcm.googleapis.com", true},
		{"authzid with the domain of a bare user", "gcm.googleapis.com", plainAuth(testUser+"@gcm.googleapis.com", testUser, testPassword), "", "gcm.googleapis.com", true},
		{"wrong password", "gcm.googleapis.com", plainAuth("", testUser+"@gcm.googleapis.com", "wrong-"+testPassword), "not-authorized", "", true},
		{"unknown user", "gcm.googleapis.com", plainAuth("", "42@gcm.googleapis.com", testPassword), "not-authorized", "", true},
		{"unknown domain", "gcm.googleapis.com", plainAuth("", testUser+"@example.org", testPassword), "not-authorized", "", false},
		{"other authzid", "gcm.googleapis.com", plainAuth("42@gcm.googleapis.com", testUser+"@gcm.googleapis.com", testPassword), "invalid-authzid", "", false},
		{"store down", "gcm.googleapis.com", plainAuth("", tempFailUser+"@gcm.googleapis.com", testPassword), "temporary-auth-failure", "", true},
		{"bad base64", "gcm.googleapis.com", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">not*base64</auth>`, "malformed-request", "", false},
		{"two fields", "gcm.googleapis.com", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + base64.StdEncoding.EncodeToString([]byte(testUser+"\x00"+testPassword)) + `</auth>`, "malformed-request", "", false},
		{"four fields", "gcm.googleapis.com", plainAuth("", testUser+"@gcm.googleapis.com", testPassword+"\x00x"), "malformed-request", "", false},
		{"no password", "gcm.googleapis.com", plainAuth("", testUser+"@gcm.googleapis.com", ""), "malformed-request", "", false},
		{"no user", "gcm.googleapis.com", plainAuth("", "@gcm.googleapis.com", testPassword), "malformed-request", "", false},
		{"empty response", "gcm.googleapis.com", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">=</auth>`, "malformed-request", "", false},
		{"other mechanism", "gcm.googleapis.com", `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="SCRAM-SHA-1">biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlx</auth>`, "invalid-mechanism", "", false},
		{"response without challenge", "gcm.googleapis.com", `<response xmlns="urn:ietf:params:xml:ns:xmpp-sasl">` + base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00"+testPassword)) + `</response>`, "malformed-request", "", false},
		{"abort", "gcm.googleapis.com", `<abort xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>`, "aborted", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dial()
			features := c.open(tc.to)
			mechs := features.child(nsSASL, "mechanisms")
			if mechs == nil || len(mechs.children) != 1 || string(mechs.children[0].text) != "PLAIN" {
				t.Fatalf("features %s, want PLAIN only", describe(features))
			}
			if features.child("urn:ietf:params:xml:ns:xmpp-tls", "starttls") != nil {
				t.Error("STARTTLS is offered")
			}
			c.send(tc.auth)
			if tc.failure != "" {
				f := c.expect(nsSASL, "failure")
				if ch := f.firstChild(); ch == nil || ch.name.Local != tc.failure {
					t.Fatalf("failure %s, want %s", describe(f), tc.failure)
				}
				// The client may retry on the same stream.
				c.send(plainAuth("", testUser+"@"+tc.to, testPassword))
				tc.domain = tc.to
			}
			c.expect(nsSASL, "success")
			c.restart()
			features = c.open(tc.to)
			if features.child(nsBind, "bind") == nil || features.child(nsSession, "session") == nil {
				t.Fatalf("features after authentication %s, want bind and session", describe(features))
			}
			c.bind("r")
			r := h.nextOpened()
			if r.conn.User() != testUser || r.conn.Domain() != tc.domain {
				t.Errorf("Conn is %s at %s, want %s at %s", r.conn.User(), r.conn.Domain(), testUser, tc.domain)
			}
			var calls []authCall
			for len(h.auths) > 0 {
				calls = append(calls, <-h.auths)
			}
			want := 1
			if tc.failure != "" && tc.wantCall {
				want = 2
			}
			if len(calls) != want {
				t.Fatalf("Authenticate called %d times (%v), want %d", len(calls), calls, want)
			}
			if last := calls[len(calls)-1]; last.user != testUser || last.password != testPassword {
				t.Errorf("Authenticate got %+v", last)
			}
		})
	}
}

func TestAuthenticationWithoutInitialResponse(t *testing.T) {
	h := startServer(t)
	c := h.dial()
	c.open("gcm.googleapis.com")
	c.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN"/>`)
	c.expect(nsSASL, "challenge")
	c.send(`<response xmlns="urn:ietf:params:xml:ns:xmpp-sasl">` + base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"@gcm.googleapis.com\x00"+testPassword)) + `</response>`)
	c.expect(nsSASL, "success")
}

func TestThreeFailedAuthenticationsEndTheStream(t *testing.T) {
	h := startServer(t)
	c := h.dial()
	c.open("gcm.googleapis.com")
	for range 3 {
		c.send(plainAuth("", testUser+"@gcm.googleapis.com", "wrong-"+testPassword))
		c.expect(nsSASL, "failure")
	}
	c.expectStreamError("not-authorized")
	if !strings.Contains(h.logs.String(), "authentication failed") {
		t.Errorf("failed authentications are not logged:\n%s", h.logs)
	}
}

func TestBind(t *testing.T) {
	h := startServer(t)
	for _, tc := range []struct {
		name, request, want string // want: resource, "*" for any
	}{
		{"requested resource", `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>app-1</resource></bind>`, "app-1"},
		{"no resource", `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>`, "*"},
		{"empty resource", `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource> </resource></bind>`, "*"},
		{"resource to escape", `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>a&amp;b&lt;"c"</resource></bind>`, `a&b<"c"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dial()
			c.open("gcm.googleapis.com")
			c.authenticate(testUser+"@gcm.googleapis.com", testPassword)
			// Session before and after bind, as clients that do not know it
			// is optional send it.
			c.send(`<iq type="set" id="s1"><session xmlns="urn:ietf:params:xml:ns:xmpp-session"/></iq>`)
			if res := c.expect(nsClient, "iq"); res.attr("type") != "result" || res.attr("id") != "s1" {
				t.Fatalf("session answered %s", describe(res))
			}
			c.send(`<iq type="set" id="b1">` + tc.request + `</iq>`)
			res := c.expect(nsClient, "iq")
			if res.attr("type") != "result" || res.attr("id") != "b1" {
				t.Fatalf("bind answered %s", describe(res))
			}
			jid := string(res.child(nsBind, "bind").child(nsBind, "jid").text)
			prefix := testUser + "@gcm.googleapis.com/"
			resource, ok := strings.CutPrefix(jid, prefix)
			if !ok || resource == "" || tc.want != "*" && resource != tc.want {
				t.Errorf("bound %q, want %s%s", jid, prefix, tc.want)
			}
			r := h.nextOpened()
			if r.conn.JID() != jid {
				t.Errorf("Conn.JID() = %q, bind said %q", r.conn.JID(), jid)
			}
			if r.conn.RemoteAddr().String() != c.conn.LocalAddr().String() {
				t.Errorf("RemoteAddr %s, client is %s", r.conn.RemoteAddr(), c.conn.LocalAddr())
			}
			c.send(`<iq type="set" id="s2"><session xmlns="urn:ietf:params:xml:ns:xmpp-session"/></iq>`)
			if res := c.expect(nsClient, "iq"); res.attr("type") != "result" || res.attr("id") != "s2" {
				t.Fatalf("session answered %s", describe(res))
			}
		})
	}
}

func TestBindRefusesBadResource(t *testing.T) {
	h := startServer(t)
	c := h.dial()
	c.open("gcm.googleapis.com")
	c.authenticate(testUser+"@gcm.googleapis.com", testPassword)
	c.send(`<iq type="set" id="b1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>a&#x7f;b</resource></bind></iq>`)
	res := c.expect(nsClient, "iq")
	if res.attr("type") != "error" || res.child(nsClient, "error").child(nsStanzas, "bad-request") == nil {
		t.Fatalf("bad resource answered %s", describe(res))
	}
	if jid := c.bind("good"); !strings.HasSuffix(jid, "/good") {
		t.Errorf("bound %s", jid)
	}
}

func TestOpenCanRefuse(t *testing.T) {
	h := startServer(t)
	h.refuse.Store(true)
	c := h.dial()
	c.open("gcm.googleapis.com")
	c.authenticate(testUser+"@gcm.googleapis.com", testPassword)
	c.send(`<iq type="set" id="b1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	c.expectStreamError("resource-constraint")
}

// TestClientDialects logs in the ways real clients do: prologue or not,
// other prefixes and quotes, everything in one write or a byte at a time,
// whitespace keepalives between stanzas.
func TestClientDialects(t *testing.T) {
	auth := plainAuth("", testUser+"@gcm.googleapis.com", testPassword)
	bind := `<iq type="set" id="bind_1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>r</resource></bind></iq>`
	for _, tc := range []struct {
		name            string
		header, header2 string
		end             string
		bytewise        bool
	}{
		{
			name:    "smack",
			header:  `<stream:stream xmlns='jabber:client' to='gcm.googleapis.com' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>`,
			header2: `<stream:stream xmlns='jabber:client' to='gcm.googleapis.com' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>`,
		},
		{
			name:    "@xmpp/client",
			header:  `<?xml version='1.0'?><stream:stream version="1.0" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" to="fcm.googleapis.com" xml:lang="en">`,
			header2: `<?xml version='1.0'?><stream:stream version="1.0" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" to="fcm.googleapis.com" xml:lang="en">`,
		},
		{
			name:     "slixmpp, a byte at a time",
			header:   "<?xml version='1.0'?>\n<stream:stream to='gcm.googleapis.com' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>",
			header2:  "<stream:stream to='gcm.googleapis.com' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>",
			bytewise: true,
		},
		{
			name:    "other prefix, no to, newer minor version",
			header:  `<s:stream xmlns:s="http://etherx.jabber.org/streams" xmlns="jabber:client" version="1.1">`,
			header2: `<x:stream xmlns="jabber:client" xmlns:x="http://etherx.jabber.org/streams" version="1.0">`,
			end:     `</x:stream>`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startServer(t)
			c := h.dial()
			send := c.send
			if tc.bytewise {
				send = func(s string) {
					for i := range len(s) {
						c.send(s[i : i+1])
					}
				}
			}
			// Header and auth in one write, as pipelining clients do.
			send(tc.header + auth)
			c.header()
			c.expect(nsStreams, "features")
			c.expect(nsSASL, "success")
			c.restart()
			send(tc.header2 + " " + bind + "\n ")
			c.header()
			c.expect(nsStreams, "features")
			if res := c.expect(nsClient, "iq"); res.attr("type") != "result" {
				t.Fatalf("bind answered %s", describe(res))
			}
			r := h.nextOpened()
			send(" \n<message id='1'><gcm xmlns='google:mobile:data'>{\"a\":1}</gcm></message> ")
			if got := string(r.nextMessage(t)); got != `{"a":1}` {
				t.Errorf("payload %q", got)
			}
			if tc.end == "" {
				tc.end = "</stream:stream>"
			}
			send(tc.end)
			c.expectEnd()
			if err := r.waitClosed(t); err != nil {
				t.Errorf("Closed(%v) after the client ended the stream", err)
			}
		})
	}
}

func TestPlainTCP(t *testing.T) {
	h := startServer(t, plainTCP)
	c, r := h.login()
	if err := r.conn.Send(context.Background(), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if got := c.expect(nsClient, "message").child(nsGCM, "gcm"); got == nil || string(got.text) != "{}" {
		t.Errorf("got %s", describe(got))
	}
}

// jsonPayload has what XML must escape, what it normalizes and what is
// not ASCII.
const jsonPayload = "{\"to\":\"tok:APA91b<&>\",\"message_id\":\"m-1\",\"data\":{\"html\":\"<b>x</b> & y ]]> 'q' \\\"dq\\\"\",\"crlf\":\"a\r\nb\",\"tab\":\"\t\",\"text\":\"héllo wörld ✓ 😀 日本\"}}"

func TestMessageReachesHandler(t *testing.T) {
	h := startServer(t)
	c, r := h.login()
	escaped := func(s string) string {
		var b strings.Builder
		if err := xml.EscapeText(&b, []byte(s)); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	for _, tc := range []struct{ name, stanza, want string }{
		{"escaped", `<message id="1"><gcm xmlns="google:mobile:data">` + escaped(jsonPayload) + `</gcm></message>`, jsonPayload},
		{"only what must be", `<message id="2"><gcm xmlns="google:mobile:data">{"a":"&lt;&amp;>'\""}</gcm></message>`, `{"a":"<&>'\""}`},
		{"cdata", `<message id="3"><gcm xmlns="google:mobile:data"><![CDATA[{"a":"<&>"}]]></gcm></message>`, `{"a":"<&>"}`},
		{"with to, body and prefix", `<message to="gcm@gcm.googleapis.com" id="4"><body/><g:gcm xmlns:g="google:mobile:data">{}</g:gcm></message>`, `{}`},
		{"empty", `<message id="5"><gcm xmlns="google:mobile:data"/></message>`, ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Stanzas the handler must not see go first: a message without
			// gcm, an error message, presence, pings' answers.
			c.send(`<message id="x"><body>hi</body></message><message type="error" id="y"><gcm xmlns="google:mobile:data">{"no":1}</gcm></message><presence/><iq type="result" id="ping1"/>`)
			c.send(tc.stanza)
			if got := string(r.nextMessage(t)); got != tc.want {
				t.Errorf("Message got %q, want %q", got, tc.want)
			}
		})
	}
	// A message the server cannot take gets an error, the stream goes on.
	c.send(`<message id="bad"><gcm xmlns="google:mobile:data">{}</gcm><gcm xmlns="google:mobile:data">{}</gcm></message>`)
	if res := c.expect(nsClient, "message"); res.attr("type") != "error" || res.attr("id") != "bad" || res.child(nsClient, "error").child(nsStanzas, "bad-request") == nil {
		t.Errorf("two gcm elements answered %s", describe(res))
	}
	c.send(`<message id="bad2"><gcm xmlns="google:mobile:data">{<x/>}</gcm></message>`)
	if res := c.expect(nsClient, "message"); res.attr("type") != "error" || res.attr("id") != "bad2" {
		t.Errorf("markup in gcm answered %s", describe(res))
	}
	// In order.
	for i := range 50 {
		c.send(`<message id="o"><gcm xmlns="google:mobile:data">` + strings.Repeat("x", i) + `</gcm></message>`)
	}
	for i := range 50 {
		if got := r.nextMessage(t); len(got) != i {
			t.Fatalf("message %d has %d bytes", i, len(got))
		}
	}
}

func TestSendRoundTrips(t *testing.T) {
	h := startServer(t)
	c, r := h.login()
	payloads := []string{jsonPayload, `{}`, "", strings.Repeat("é<", 1000)}
	for _, p := range payloads {
		if err := r.conn.Send(context.Background(), []byte(p)); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	ids := map[string]bool{}
	for _, want := range payloads {
		m := c.expect(nsClient, "message")
		gcm := m.child(nsGCM, "gcm")
		if gcm == nil || string(gcm.text) != want {
			t.Errorf("client got %s, want payload %q", describe(m), want)
		}
		if id := m.attr("id"); id == "" || ids[id] {
			t.Errorf("stanza id %q is empty or repeated", id)
		} else {
			ids[id] = true
		}
	}
	for _, bad := range []string{"{\"a\":\"\uffff\"}", "{\"a\":\"\x01\"}", "\xff"} {
		if err := r.conn.Send(context.Background(), []byte(bad)); !errors.Is(err, ErrInvalidPayload) {
			t.Errorf("Send(%q) = %v, want ErrInvalidPayload", bad, err)
		}
	}
}

// TestSendBlocksWhenQueueFull: a client that does not read fills the
// socket buffers, then the queue; Send then waits for its context.
func TestSendBlocksWhenQueueFull(t *testing.T) {
	h := startServer(t, func(c *Config) { c.SendQueue, c.WriteTimeout = 2, time.Second })
	_, r := h.login()
	payload := []byte(strings.Repeat("x", 60<<10))
	for i := 0; ; i++ {
		if i == 10000 {
			t.Fatal("Send never blocked")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := r.conn.Send(ctx, payload)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
}

func TestPings(t *testing.T) {
	t.Run("client pings", func(t *testing.T) {
		h := startServer(t)
		c, _ := h.login()
		for _, tc := range []struct{ req, typ, cond string }{
			{`<iq type="get" id="p1"><ping xmlns="urn:xmpp:ping"/></iq>`, "result", ""},
			{`<iq type="get" id="p2"><query xmlns="jabber:iq:roster"/></iq>`, "error", "service-unavailable"},
			{`<iq type="set" id="p3"><query xmlns="jabber:iq:private"/></iq>`, "error", "service-unavailable"},
			{`<iq type="get" id="p4"/>`, "error", "service-unavailable"},
			{`<iq type="nonsense" id="p5"><ping xmlns="urn:xmpp:ping"/></iq>`, "error", "bad-request"},
		} {
			c.send(tc.req)
			res := c.expect(nsClient, "iq")
			id := res.attr("id")
			if res.attr("type") != tc.typ || !strings.Contains(tc.req, `id="`+id+`"`) {
				t.Errorf("%s answered %s", tc.req, describe(res))
			}
			if tc.cond != "" && res.child(nsClient, "error").child(nsStanzas, tc.cond) == nil {
				t.Errorf("%s answered %s, want %s", tc.req, describe(res), tc.cond)
			}
		}
	})
	t.Run("server pings an idle client, any data answers", func(t *testing.T) {
		h := startServer(t, func(c *Config) { c.IdleTimeout, c.PingTimeout = 150*time.Millisecond, time.Second })
		c, r := h.login()
		for _, answer := range []string{`<iq type="result" id="%s"/>`, " ", `<iq type="error" id="%s"/>`} {
			ping := c.expect(nsClient, "iq")
			if ping.attr("type") != "get" || ping.child(nsPing, "ping") == nil || ping.attr("id") == "" {
				t.Fatalf("got %s, want a ping", describe(ping))
			}
			c.send(strings.ReplaceAll(answer, "%s", ping.attr("id")))
		}
		// A client that stays silent is gone.
		c.expect(nsClient, "iq")
		c.expectStreamError("connection-timeout")
		if err := r.waitClosed(t); err == nil {
			t.Error("Closed(nil) after a ping timeout")
		}
	})
}

func TestHandshakeTimeout(t *testing.T) {
	h := startServer(t, func(c *Config) { c.HandshakeTimeout = 300 * time.Millisecond })
	c := h.dial()
	c.open("gcm.googleapis.com")
	c.expectStreamError("connection-timeout")

	// One that does not even finish TLS.
	raw, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, raw); err != nil {
		t.Errorf("the server did not close a connection that never did TLS: %v", err)
	}
}

func TestStreamErrors(t *testing.T) {
	const (
		fresh = iota
		afterHeader
		afterAuth
		afterBind
	)
	header := `<stream:stream to="gcm.googleapis.com" version="1.0" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">`
	for _, tc := range []struct {
		name  string
		after int
		send  string
		cond  string
	}{
		{"message before auth", afterHeader, `<message id="1"><gcm xmlns="google:mobile:data">{}</gcm></message>`, "not-authorized"},
		{"iq before auth", afterHeader, `<iq type="get" id="1"><ping xmlns="urn:xmpp:ping"/></iq>`, "not-authorized"},
		{"message before bind", afterAuth, `<message id="1"><gcm xmlns="google:mobile:data">{}</gcm></message>`, "not-authorized"},
		{"ping before bind", afterAuth, `<iq type="get" id="1"><ping xmlns="urn:xmpp:ping"/></iq>`, "not-authorized"},
		{"unknown element before auth", afterHeader, `<foo xmlns="urn:example"/>`, "unsupported-stanza-type"},
		{"starttls", afterHeader, `<starttls xmlns="urn:ietf:params:xml:ns:xmpp-tls"/>`, "unsupported-stanza-type"},
		{"unknown element", afterBind, `<foo/>`, "unsupported-stanza-type"},
		{"auth again", afterBind, plainAuth("", testUser, testPassword), "unsupported-stanza-type"},
		{"mismatched tags", afterBind, `<message><gcm xmlns="google:mobile:data">{}</message>`, "not-well-formed"},
		{"unknown entity", afterBind, `<message><gcm xmlns="google:mobile:data">&bogus;</gcm></message>`, "not-well-formed"},
		{"bad character", afterBind, "<message><gcm xmlns=\"google:mobile:data\">\x01</gcm></message>", "not-well-formed"},
		{"invalid UTF-8", afterBind, "<message><gcm xmlns=\"google:mobile:data\">\xff</gcm></message>", "not-well-formed"},
		{"malformed before auth", afterHeader, `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN"</auth>`, "not-well-formed"},
		{"text outside a stanza", afterBind, `hello<iq/>`, "bad-format"},
		{"comment", afterBind, `<!-- hi -->`, "restricted-xml"},
		{"comment in a stanza", afterBind, `<message><!-- hi --></message>`, "restricted-xml"},
		{"processing instruction", afterBind, `<?php x?>`, "restricted-xml"},
		{"doctype", fresh, `<!DOCTYPE x>`, "restricted-xml"},
		{"oversized stanza", afterBind, `<message><gcm xmlns="google:mobile:data">` + strings.Repeat("x", 5000) + `</gcm></message>`, "policy-violation"},
		{"oversized header", fresh, `<stream:stream a="` + strings.Repeat("x", 5000) + `">`, "policy-violation"},
		{"endless whitespace", afterBind, strings.Repeat(" ", 5000), "policy-violation"},
		{"not a stream", fresh, `<message/>`, "bad-format"},
		{"wrong stream namespace", fresh, `<stream:stream to="gcm.googleapis.com" version="1.0" xmlns="jabber:client" xmlns:stream="urn:wrong">`, "invalid-namespace"},
		{"undeclared stream prefix", fresh, `<stream:stream to="gcm.googleapis.com" version="1.0" xmlns="jabber:client">`, "invalid-namespace"},
		{"server namespace", fresh, `<stream:stream to="gcm.googleapis.com" version="1.0" xmlns="jabber:server" xmlns:stream="http://etherx.jabber.org/streams">`, "invalid-namespace"},
		{"unknown host", fresh, `<stream:stream to="example.org" version="1.0" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">`, "host-unknown"},
		{"no version", fresh, `<stream:stream to="gcm.googleapis.com" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">`, "unsupported-version"},
		{"version 2", fresh, `<stream:stream to="gcm.googleapis.com" version="2.0" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">`, "unsupported-version"},
		{"text before the header", fresh, `hello` + header, "bad-format"},
		{"XML 1.1", fresh, `<?xml version="1.1"?>` + header, "not-well-formed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startServer(t)
			var c *client
			var r *recorder
			switch tc.after {
			case afterBind:
				c, r = h.login()
			default:
				c = h.dial()
				if tc.after >= afterHeader {
					c.open("gcm.googleapis.com")
				}
				if tc.after >= afterAuth {
					c.authenticate(testUser+"@gcm.googleapis.com", testPassword)
				}
			}
			c.send(tc.send)
			if tc.after == fresh {
				c.header() // the server's, which a stream error needs
			}
			c.expectStreamError(tc.cond)
			if r != nil {
				if err := r.waitClosed(t); err == nil {
					t.Error("Closed(nil) after a stream error")
				}
			}
			// The server goes on.
			h.login()
		})
	}
}

func TestClientEndsStream(t *testing.T) {
	for _, tc := range []struct {
		name    string
		end     func(c *client)
		wantErr bool
	}{
		{"stream end", func(c *client) { c.send(`</stream:stream>`); c.expectEnd() }, false},
		{"stream error", func(c *client) {
			c.send(`<stream:error><conflict xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error></stream:stream>`)
			c.expectEnd()
		}, true},
		{"connection closed", func(c *client) { c.conn.Close() }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startServer(t)
			c, r := h.login()
			tc.end(c)
			if err := r.waitClosed(t); (err != nil) != tc.wantErr {
				t.Errorf("Closed(%v), want an error: %v", err, tc.wantErr)
			}
			if err := r.conn.Send(context.Background(), []byte("{}")); !errors.Is(err, ErrClosed) {
				t.Errorf("Send after the end: %v, want ErrClosed", err)
			}
			h.stop()
			if n := r.closes.Load(); n != 1 {
				t.Errorf("Closed called %d times", n)
			}
		})
	}
}

// TestCloseDrains is the caller's graceful drain: queue, Close, keep
// getting what the client sends until it ends its side.
func TestCloseDrains(t *testing.T) {
	h := startServer(t)
	c, r := h.login()
	for i := range 20 {
		if err := r.conn.Send(context.Background(), []byte(`{"n":`+strings.Repeat("1", i+1)+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	r.conn.Close()
	r.conn.Close()
	if err := r.conn.Send(context.Background(), []byte("{}")); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v, want ErrClosed", err)
	}
	for i := range 20 {
		m := c.expect(nsClient, "message")
		if got, want := string(m.child(nsGCM, "gcm").text), `{"n":`+strings.Repeat("1", i+1)+`}`; got != want {
			t.Fatalf("message %d is %s, want %s", i, got, want)
		}
	}
	if el, err := c.next(); el != nil || err != nil {
		t.Fatalf("after the queue: %s, %v; want the end of the stream", describe(el), err)
	}
	// Acks still arrive.
	c.send(`<message><gcm xmlns="google:mobile:data">{"message_type":"ack"}</gcm></message></stream:stream>`)
	if got := string(r.nextMessage(t)); got != `{"message_type":"ack"}` {
		t.Errorf("after Close the handler got %q", got)
	}
	if err := r.waitClosed(t); err != nil {
		t.Errorf("Closed(%v) after a polite end", err)
	}
	c.expectEOF()

	// A client that never ends its side is cut after CloseTimeout.
	c, r = h.login()
	r.conn.Close()
	if el, err := c.next(); el != nil || err != nil {
		t.Fatalf("%s, %v; want the end of the stream", describe(el), err)
	}
	if err := r.waitClosed(t); err != nil {
		t.Errorf("Closed(%v) after a polite end", err)
	}
	c.expectEOF()
}

// TestSendAndCloseWithinOpen: a caller that drains a connection at once
// (it is shutting down) sends and closes before Open returns; the client
// still gets the bind result first.
func TestSendAndCloseWithinOpen(t *testing.T) {
	closed := make(chan error, 1)
	h := startServer(t, func(c *Config) {
		c.Open = func(xc *Conn) Handler {
			if err := xc.Send(context.Background(), []byte(`{"message_type":"control"}`)); err != nil {
				t.Errorf("Send within Open: %v", err)
			}
			xc.Close()
			return handlerFuncs{closed: func(err error) { closed <- err }}
		}
	})
	c := h.dial()
	c.open("gcm.googleapis.com")
	c.authenticate(testUser+"@gcm.googleapis.com", testPassword)
	c.bind("r")
	if m := c.expect(nsClient, "message"); string(m.child(nsGCM, "gcm").text) != `{"message_type":"control"}` {
		t.Errorf("got %s", describe(m))
	}
	c.expectEnd()
	if err := <-closed; err != nil {
		t.Errorf("Closed(%v)", err)
	}
}

// handlerFuncs is a Handler for tests that need no recorder.
type handlerFuncs struct{ closed func(error) }

func (handlerFuncs) Message([]byte)     {}
func (h handlerFuncs) Closed(err error) { h.closed(err) }

func TestHandlerPanicEndsOnlyItsConnection(t *testing.T) {
	h := startServer(t)
	h.panics = true
	c, r := h.login()
	c.send(`<message><gcm xmlns="google:mobile:data">` + panicPayload + `</gcm></message>`)
	c.expectStreamError("internal-server-error")
	if err := r.waitClosed(t); err == nil {
		t.Error("Closed(nil) after a panic")
	}
	if !strings.Contains(h.logs.String(), "handler bug") {
		t.Error("the panic is not logged")
	}
	c, r = h.login()
	c.send(`<message><gcm xmlns="google:mobile:data">{}</gcm></message>`)
	r.nextMessage(t)
}

// TestServeShutdown: Serve's return ends every connection, in every
// phase, calls every Closed once, and leaves no goroutine behind.
func TestServeShutdown(t *testing.T) {
	before := runtime.NumGoroutine()
	h := startServer(t)
	var recs []*recorder
	var clients []*client
	for range 3 {
		c, r := h.login()
		clients, recs = append(clients, c), append(recs, r)
		if err := r.conn.Send(context.Background(), []byte("{}")); err != nil {
			t.Fatal(err)
		}
		c.expect(nsClient, "message")
	}
	half := h.dial()
	half.open("gcm.googleapis.com")
	silent, err := net.Dial("tcp", h.addr) // not even TLS
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	h.stop()
	for i, c := range clients {
		c.expectStreamError("system-shutdown")
		err := recs[i].waitClosed(t)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Closed(%v), want context.Canceled", err)
		}
		if n := recs[i].closes.Load(); n != 1 {
			t.Errorf("Closed called %d times", n)
		}
		if err := recs[i].conn.Send(context.Background(), []byte("{}")); !errors.Is(err, ErrClosed) {
			t.Errorf("Send after Serve returned: %v", err)
		}
	}
	half.expectStreamError("system-shutdown")
	if _, err := net.Dial("tcp", h.addr); err == nil {
		t.Error("the listener still accepts")
	}
	for _, c := range clients {
		c.conn.Close()
	}
	half.conn.Close()
	silent.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLogsKeepPasswordsOut(t *testing.T) {
	h := startServer(t)
	c := h.dial()
	c.open("gcm.googleapis.com")
	c.send(plainAuth("", testUser+"@gcm.googleapis.com", "wrong-"+testPassword))
	c.expect(nsSASL, "failure")
	c.send(plainAuth("", tempFailUser+"@gcm.googleapis.com", testPassword))
	c.expect(nsSASL, "failure")
	c.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + testPassword + `</auth>`)
	c.expect(nsSASL, "failure")
	c.expectStreamError("not-authorized")
	c = h.dial()
	c.open("gcm.googleapis.com")
	c.send(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">&` + testPassword + `;</auth>`)
	c.expectStreamError("not-well-formed")
	c, _ = h.login()
	c.send(`<message><gcm xmlns="google:mobile:data">&` + testPassword + `;</gcm></message>`)
	c.expectStreamError("not-well-formed")
	h.stop()
	logs := h.logs.String()
	for _, want := range []string{"authentication failed", "authentication could not be checked", "malformed SASL PLAIN", "not-well-formed", "stream bound"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log has no %q:\n%s", want, logs)
		}
	}
	// The harness checks at cleanup that the password is not in them.
}
