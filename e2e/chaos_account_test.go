// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The chaos run's downstream stream mixes the ways GCM lets a stored
// message end. Kinds go by seq, so that a delivered message whose send
// answer was lost in a crash is still known by its data.
type downKind string

const (
	// kindPlain must be delivered (or counted in a deleted_messages
	// notice): four weeks to live.
	kindPlain downKind = "plain"
	// kindCollapsing shares one collapse key: a newer one may replace it,
	// the newest must be delivered.
	kindCollapsing downKind = "collapsing"
	// kindShort lives one second: it may expire.
	kindShort downKind = "short"
	// kindMedium lives ten minutes: it may expire only when that much
	// time, counting forward clock jumps, passed after it was sent.
	kindMedium downKind = "medium"
	// kindLive has time to live 0: now or never, it may be lost.
	kindLive downKind = "ttl0"
)

const (
	chaosCollapseKey = "state"
	mediumTTL        = 600
)

var downPattern = [...]downKind{
	kindPlain, kindPlain, kindPlain, kindCollapsing, kindPlain,
	kindLive, kindCollapsing, kindShort, kindPlain, kindMedium,
}

func downKindOf(seq int) downKind { return downPattern[seq%len(downPattern)] }

// downMessage is what the app server sends as message seq, and the time
// to live it gives it in seconds.
func downMessage(token string, seq int) (map[string]any, int) {
	kind := downKindOf(seq)
	msg := map[string]any{"to": token, "data": map[string]any{"seq": seq, "kind": string(kind)}}
	ttl := 2419200
	switch kind {
	case kindCollapsing:
		msg["collapse_key"] = chaosCollapseKey
	case kindShort:
		ttl = 1
	case kindMedium:
		ttl = mediumTTL
	case kindLive:
		ttl = 0
	}
	if ttl != 2419200 {
		msg["time_to_live"] = ttl
	}
	return msg, ttl
}

// downSend is a downstream message the server accepted.
type downSend struct {
	seq  int
	kind downKind
	ttl  int
	// asked is when the app server sent the request the server accepted,
	// at when the server answered.
	asked, at time.Time
}

// window is a stretch of a run, from its start up to its end.
type window struct{ from, to time.Time }

// downRun is what a run did downstream, for the accounts.
type downRun struct {
	// sent holds the accepted messages by ID; attempted is the highest seq
	// the app server tried to send.
	sent      map[string]downSend
	attempted int
	jumps     []clockJump
	// quiet are the windows in which no fault was on and every process was
	// up and connected.
	quiet []window
	// end is when the run ended.
	end time.Time
}

// inQuiet tells whether a message sent and answered within [asked, at]
// went out in a quiet window.
func (run *downRun) inQuiet(asked, at time.Time) bool {
	return slices.ContainsFunc(run.quiet, func(w window) bool { return !asked.Before(w.from) && !at.After(w.to) })
}

// clockJump is a restart of a process with another TETHER_CLOCK_OFFSET.
type clockJump struct {
	at      time.Time
	process string
	from    time.Duration
	to      time.Duration
}

// downFigures say how each downstream message ended.
type downFigures struct {
	Accepted int `json:"accepted"`
	// Delivered counts accepted messages that reached the app.
	Delivered int `json:"delivered"`
	// Duplicated counts deliveries beyond a message's first that came
	// before the agent had confirmed its ack: at least once allows them.
	Duplicated int `json:"duplicated_before_ack"`
	// AfterAck counts deliveries of a message whose ack the agent had
	// confirmed: must be 0.
	AfterAck int `json:"after_ack"`
	Expired  int `json:"expired"`
	Replaced int `json:"replaced"`
	// Deleted is the sum of the app's deleted_messages counts, and
	// DeletedCovering how many undelivered messages that must otherwise
	// have been delivered it accounts for.
	Deleted         int `json:"deleted"`
	DeletedCovering int `json:"deleted_covering"`
	// Lost counts the undelivered messages that nothing explains: must
	// be 0.
	Lost int `json:"lost"`
	// TTL0Lost counts messages with time to live 0 that did not reach
	// the app, all sent while a fault was on or just over;
	// TTL0LostQuiet those sent in a quiet window: must be 0.
	TTL0Lost      int `json:"ttl0_lost"`
	TTL0LostQuiet int `json:"ttl0_lost_quiet"`
	// Unanswered counts messages delivered whose send answer was lost in
	// a crash of the server.
	Unanswered int                       `json:"unanswered_delivered"`
	ByKind     map[downKind]*kindFigures `json:"by_kind"`
}

type kindFigures struct {
	Accepted  int `json:"accepted"`
	Delivered int `json:"delivered"`
}

// accountDown accounts for every accepted downstream message from the
// app's records, and lists what breaks the rules.
func accountDown(run downRun, records []appRecord) (downFigures, []string) {
	down := run.sent
	fig := downFigures{Accepted: len(down), ByKind: map[downKind]*kindFigures{}}
	var problems []string
	deliveries := map[string]int{}
	acked := map[string]bool{}
	newestDelivered := -1 // the highest seq of a delivered collapsing message
	for _, r := range records {
		switch r.Op {
		case recGot:
			deliveries[r.ID]++
			if acked[r.ID] {
				fig.AfterAck++
				problems = append(problems, fmt.Sprintf("message %s (seq %d) delivered again after its ack was confirmed", r.ID, r.Seq))
			} else if deliveries[r.ID] > 1 {
				fig.Duplicated++
			}
			if s, ok := down[r.ID]; ok && s.seq != r.Seq {
				problems = append(problems, fmt.Sprintf("message %s delivered with seq %d, sent with seq %d", r.ID, r.Seq, s.seq))
			}
			if r.Seq < 0 || r.Seq > run.attempted || downKind(r.Kind) != downKindOf(max(r.Seq, 0)) {
				problems = append(problems, fmt.Sprintf("message %s delivered with seq %d and kind %q, which was never sent", r.ID, r.Seq, r.Kind))
			}
			if downKind(r.Kind) == kindCollapsing {
				newestDelivered = max(newestDelivered, r.Seq)
			}
		case recAcked:
			acked[r.ID] = true
		case recDeleted:
			fig.Deleted += r.Count
		}
	}
	for id := range deliveries {
		if _, ok := down[id]; !ok {
			fig.Unanswered++
		}
	}

	var mustHave []string // undelivered messages nothing but a deletion explains
	newestAccepted := -1
	for id, s := range down {
		k := fig.ByKind[s.kind]
		if k == nil {
			k = &kindFigures{}
			fig.ByKind[s.kind] = k
		}
		k.Accepted++
		if s.kind == kindCollapsing {
			newestAccepted = max(newestAccepted, s.seq)
		}
		if deliveries[id] > 0 {
			k.Delivered++
			fig.Delivered++
			continue
		}
		switch s.kind {
		case kindPlain:
			mustHave = append(mustHave, fmt.Sprintf("%s (seq %d, plain)", id, s.seq))
		case kindShort:
			fig.Expired++
		case kindMedium:
			if allowed := run.end.Sub(s.at) + forwardJumps(run.jumps, s.at); time.Duration(s.ttl)*time.Second <= allowed {
				fig.Expired++
			} else {
				mustHave = append(mustHave, fmt.Sprintf("%s (seq %d, %d s to live, at most %v passed)", id, s.seq, s.ttl, allowed.Round(time.Second)))
			}
		case kindLive:
			if run.inQuiet(s.asked, s.at) {
				fig.TTL0LostQuiet++
				problems = append(problems, fmt.Sprintf("message %s (seq %d, time to live 0) lost, sent while the device was connected and nothing failed", id, s.seq))
			} else {
				fig.TTL0Lost++
			}
		case kindCollapsing:
			fig.Replaced++ // unless it is the newest, below
		}
	}
	if newestAccepted >= 0 && newestDelivered < newestAccepted {
		fig.Replaced--
		mustHave = append(mustHave, fmt.Sprintf("the newest message under collapse key %q (seq %d), or a newer one", chaosCollapseKey, newestAccepted))
	}
	slices.Sort(mustHave)
	fig.DeletedCovering = min(len(mustHave), fig.Deleted)
	fig.Lost = len(mustHave) - fig.DeletedCovering
	if fig.Lost > 0 {
		problems = append(problems, fmt.Sprintf("%d accepted messages lost (deleted_messages notices account for %d): %v",
			len(mustHave), fig.Deleted, mustHave[:min(len(mustHave), 10)]))
	}
	return fig, problems
}

// forwardJumps is how far clocks jumped forward after t: time that may
// have counted against a time to live without passing.
func forwardJumps(jumps []clockJump, t time.Time) time.Duration {
	var d time.Duration
	for _, j := range jumps {
		if j.at.After(t) && j.to > j.from {
			d += j.to - j.from
		}
	}
	return d
}

// webhookPost is one upstream message the webhook got.
type webhookPost struct {
	id string
	at time.Time
}

// upFigures say how the upstream messages ended.
type upFigures struct {
	Accepted int `json:"accepted"`
	// AtWebhook counts accepted messages the webhook got.
	AtWebhook int `json:"at_webhook"`
	Posts     int `json:"posts"`
	// Repeated counts posts of a message the webhook had already got:
	// RepeatedAcrossKill those with a SIGKILL of tether-server between the
	// first post and the repeat, RepeatedAcrossStop those with only a
	// graceful stop between, and the rest had no stop between.
	Repeated           int `json:"repeated_posts"`
	RepeatedAcrossKill int `json:"repeated_across_server_kill"`
	RepeatedAcrossStop int `json:"repeated_across_server_stop"`
	// Unanswered counts messages at the webhook whose send the agent did
	// not answer (it was killed, or the run stopped, first).
	Unanswered int `json:"unanswered_at_webhook"`
	SendErrors int `json:"send_errors"`
}

// serverStop is a stop of tether-server: killed, or stopped gracefully.
type serverStop struct {
	at     time.Time
	killed bool
}

// accountUp accounts for every upstream message the agent accepted, and
// lists what breaks the rules and each repeated post.
func accountUp(accepted map[string]bool, posts []webhookPost, stops []serverStop, records []appRecord) (upFigures, []string, []string) {
	fig := upFigures{Accepted: len(accepted), Posts: len(posts)}
	var problems, repeats []string
	first := map[string]time.Time{}
	for _, p := range posts {
		at, seen := first[p.id]
		if !seen {
			first[p.id] = p.at
			if !accepted[p.id] {
				fig.Unanswered++
			}
			continue
		}
		fig.Repeated++
		between := "no stop of tether-server"
		for _, stop := range stops {
			if stop.at.After(at) && stop.at.Before(p.at) {
				between = "a graceful stop of tether-server"
				if stop.killed {
					between = "a SIGKILL of tether-server"
					break
				}
			}
		}
		switch between {
		case "a SIGKILL of tether-server":
			fig.RepeatedAcrossKill++
		case "a graceful stop of tether-server":
			fig.RepeatedAcrossStop++
		}
		repeats = append(repeats, fmt.Sprintf("%s posted again %v after its first post, with %s between", p.id, p.at.Sub(at).Round(time.Millisecond), between))
	}
	var missing []string
	for id := range accepted {
		if _, ok := first[id]; ok {
			fig.AtWebhook++
		} else {
			missing = append(missing, id)
		}
	}
	for _, r := range records {
		if r.Op == recSendError {
			fig.SendErrors++
			problems = append(problems, fmt.Sprintf("upstream %s given up: %s", r.ID, r.Error))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		problems = append(problems, fmt.Sprintf("%d accepted upstream messages never reached the webhook: %v", len(missing), missing[:min(len(missing), 10)]))
	}
	return fig, problems, repeats
}

func TestChaosAccountingDownstream(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	sent := func(seq int) downSend {
		_, ttl := downMessage("token", seq)
		return downSend{seq: seq, kind: downKindOf(seq), ttl: ttl, asked: t0.Add(-time.Millisecond), at: t0}
	}
	got := func(id string, seq int) appRecord {
		return appRecord{Op: recGot, ID: id, Seq: seq, Kind: string(downKindOf(seq))}
	}
	acked := func(id string) appRecord { return appRecord{Op: recAcked, ID: id} }
	// Seqs of each kind in downPattern.
	const plain, collapsing, live, short, medium, collapsing2 = 0, 3, 5, 7, 9, 13
	for _, tc := range []struct {
		name    string
		down    map[string]downSend
		records []appRecord
		jumps   []clockJump
		quiet   []window
		end     time.Duration // after t0
		want    downFigures
		fails   bool
	}{{
		name:    "delivered and acked",
		down:    map[string]downSend{"a": sent(plain)},
		records: []appRecord{got("a", plain), acked("a")},
		want:    downFigures{Accepted: 1, Delivered: 1},
	}, {
		name:    "redelivered before the ack was confirmed",
		down:    map[string]downSend{"a": sent(plain)},
		records: []appRecord{got("a", plain), got("a", plain), acked("a")},
		want:    downFigures{Accepted: 1, Delivered: 1, Duplicated: 1},
	}, {
		name:    "redelivered after the ack was confirmed",
		down:    map[string]downSend{"a": sent(plain)},
		records: []appRecord{got("a", plain), acked("a"), {Op: recStart}, got("a", plain)},
		want:    downFigures{Accepted: 1, Delivered: 1, AfterAck: 1},
		fails:   true,
	}, {
		name:  "a plain message lost",
		down:  map[string]downSend{"a": sent(plain)},
		want:  downFigures{Accepted: 1, Lost: 1},
		fails: true,
	}, {
		name:    "a plain message in a deleted_messages count",
		down:    map[string]downSend{"a": sent(plain)},
		records: []appRecord{{Op: recDeleted, Count: 3}},
		want:    downFigures{Accepted: 1, Deleted: 3, DeletedCovering: 1},
	}, {
		name:    "replaced under the collapse key",
		down:    map[string]downSend{"c1": sent(collapsing), "c2": sent(collapsing2)},
		records: []appRecord{got("c2", collapsing2)},
		want:    downFigures{Accepted: 2, Delivered: 1, Replaced: 1},
	}, {
		name:    "the newest under the collapse key lost",
		down:    map[string]downSend{"c1": sent(collapsing), "c2": sent(collapsing2)},
		records: []appRecord{got("c1", collapsing)},
		want:    downFigures{Accepted: 2, Delivered: 1, Lost: 1},
		fails:   true,
	}, {
		name:    "replaced by one whose send answer was lost",
		down:    map[string]downSend{"c1": sent(collapsing)},
		records: []appRecord{got("c2", collapsing2)},
		want:    downFigures{Accepted: 1, Replaced: 1, Unanswered: 1},
	}, {
		name: "short-lived and time-to-live-0 ones may go",
		down: map[string]downSend{"s": sent(short), "l": sent(live)},
		want: downFigures{Accepted: 2, Expired: 1, TTL0Lost: 1},
	}, {
		name:  "time to live 0, lost though sent in a quiet window",
		down:  map[string]downSend{"l": sent(live)},
		quiet: []window{{t0.Add(-time.Second), t0.Add(time.Second)}},
		want:  downFigures{Accepted: 1, TTL0LostQuiet: 1},
		fails: true,
	}, {
		name:  "time to live 0, lost, sent as a quiet window began",
		down:  map[string]downSend{"l": sent(live)},
		quiet: []window{{t0, t0.Add(time.Second)}},
		want:  downFigures{Accepted: 1, TTL0Lost: 1},
	}, {
		name:  "a ten-minute one expired a minute after it was sent",
		down:  map[string]downSend{"m": sent(medium)},
		end:   time.Minute,
		want:  downFigures{Accepted: 1, Lost: 1},
		fails: true,
	}, {
		name: "a ten-minute one expired after a clock jumped an hour ahead",
		down: map[string]downSend{"m": sent(medium)},
		jumps: []clockJump{
			{at: t0.Add(-time.Second), process: "tether-server", from: 0, to: time.Hour}, // before it was sent: no excuse
			{at: t0.Add(time.Second), process: "tether-server", from: -time.Hour, to: 0},
		},
		end:  time.Minute,
		want: downFigures{Accepted: 1, Expired: 1},
	}, {
		name:    "a delivery of a message never sent",
		down:    map[string]downSend{"a": sent(plain)},
		records: []appRecord{got("a", plain), got("x", 1000)},
		want:    downFigures{Accepted: 1, Delivered: 1, Unanswered: 1},
		fails:   true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			run := downRun{sent: tc.down, attempted: 100, jumps: tc.jumps, quiet: tc.quiet, end: t0.Add(tc.end)}
			fig, problems := accountDown(run, tc.records)
			fig.ByKind = nil
			if !reflect.DeepEqual(fig, tc.want) {
				t.Errorf("figures %+v, want %+v", fig, tc.want)
			}
			if fails := len(problems) > 0; fails != tc.fails {
				t.Errorf("problems %q, want some: %v", problems, tc.fails)
			}
		})
	}
}

func TestChaosAccountingUpstream(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	accepted := map[string]bool{"u1": true, "u2": true}
	posts := []webhookPost{{"u1", at(1)}, {"u2", at(2)}, {"u1", at(4)}, {"u2", at(6)}, {"u3", at(7)}}
	fig, problems, repeats := accountUp(accepted, posts, []serverStop{{at(3), false}, {at(5), true}}, nil)
	want := upFigures{Accepted: 2, AtWebhook: 2, Posts: 5, Repeated: 2, RepeatedAcrossKill: 1, RepeatedAcrossStop: 1, Unanswered: 1}
	if fig != want || len(problems) > 0 || len(repeats) != 2 {
		t.Errorf("got %+v, %q, %q; want %+v, no problems, 2 repeats", fig, problems, repeats, want)
	}
	// A repeat with no restart between, a message missing, one given up.
	fig, problems, _ = accountUp(map[string]bool{"u1": true, "u2": true}, posts[:1:1], nil,
		[]appRecord{{Op: recSendError, ID: "u2", Error: "TtlExceeded"}})
	if fig.AtWebhook != 1 || fig.SendErrors != 1 || len(problems) != 2 {
		t.Errorf("got %+v, %q; want 1 at the webhook, 1 send error, 2 problems", fig, problems)
	}
	_, _, repeats = accountUp(accepted, []webhookPost{{"u1", at(1)}, {"u1", at(2)}}, []serverStop{{at(3), true}}, nil)
	if len(repeats) != 1 || !strings.Contains(repeats[0], "no stop") {
		t.Errorf("repeats %q, want one without a restart", repeats)
	}
}

func TestChaosAppRecordsSkipATornLastLine(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "1"), filepath.Join(dir, "2")
	os.WriteFile(first, []byte(`{"op":"start"}`+"\n"+`{"op":"got","id":"a","seq":0}`+"\n"+`{"op":"ack`), 0o600)
	os.WriteFile(second, []byte(`{"op":"start"}`+"\n"+`{"op":"acked","id":"a"}`+"\n"), 0o600)
	got, err := readAppRecords([]string{first, filepath.Join(dir, "never-written"), second})
	if err != nil {
		t.Fatal(err)
	}
	want := []appRecord{{Op: recStart}, {Op: recGot, ID: "a"}, {Op: recStart}, {Op: recAcked, ID: "a"}}
	if !slices.Equal(got, want) {
		t.Errorf("read %+v, want %+v", got, want)
	}
	os.WriteFile(second, []byte("not json\n"), 0o600)
	if _, err := readAppRecords([]string{second}); err == nil {
		t.Error("a whole line that is not JSON was read without an error")
	}
}
