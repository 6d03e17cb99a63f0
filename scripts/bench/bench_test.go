// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchBinaries returns a directory holding tether-server, tetherd and
// idle-report: $BENCH_BIN when set, else a fresh build of this checkout.
func benchBinaries(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("BENCH_BIN"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", dir+"/",
		"tether/cmd/tether-server", "tether/cmd/tetherd", "tether/scripts/idle-report")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the binaries (or set BENCH_BIN to a directory of them): %v\n%s", err, out)
	}
	return dir
}

// TestQuickRun runs the whole tool in -quick mode against the real
// programs and checks that its report holds together: every message of
// every run accounted for on both sides, percentiles in order, each ratio
// the quotient of its figures.
func TestQuickRun(t *testing.T) {
	if _, err := findMosquitto(); err != nil {
		t.Skipf("mosquitto is not installed, so there is nothing to compare with: %v", err)
	}
	if testing.Short() {
		t.Skip("runs every program for about 20 s")
	}
	c, err := parseFlags([]string{"-quick", "-bin", benchBinaries(t)}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := run(ctx, c, &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}

	for _, side := range []struct {
		name string
		res  sideResult
	}{{"Tether", r.Tether}, {"Mosquitto", r.Mosquitto}} {
		if len(side.res.Throughput) != len(c.counts) {
			t.Fatalf("%s: %d throughput runs, want %d", side.name, len(side.res.Throughput), len(c.counts))
		}
		runs := append([]runResult{side.res.Latency}, side.res.Throughput...)
		want := append([]int{c.latencyN}, c.counts...)
		for i, run := range runs {
			where := side.name + " " + run.Name
			if run.Messages != want[i] || run.Sent != want[i] || run.Received != want[i] || run.Missing != 0 {
				t.Errorf("%s: messages %d, sent %d, received %d, missing %d; want %d of each and none missing",
					where, run.Messages, run.Sent, run.Received, run.Missing, want[i])
			}
			if side.name == "Tether" && run.Acked != want[i] {
				t.Errorf("%s: %d acked, want %d", where, run.Acked, want[i])
			}
			if !(run.P50Millis > 0 && run.P50Millis <= run.P99Millis && run.P99Millis <= run.MaxMillis) {
				t.Errorf("%s: p50 %v, p99 %v, max %v: not 0 < p50 <= p99 <= max", where, run.P50Millis, run.P99Millis, run.MaxMillis)
			}
			if run.Seconds <= 0 || run.PerSecond <= 0 {
				t.Errorf("%s: %v s, %v/s", where, run.Seconds, run.PerSecond)
			}
			if run.Wire.Unframed != 0 || run.Wire.Connections != 0 {
				t.Errorf("%s: the link was not followed throughout: %+v", where, run.Wire)
			}
			// Each message crosses the link at least once, with its payload.
			if run.Wire.DataBytes < uint64(run.Messages*c.payload) {
				t.Errorf("%s: %d data bytes on the link for %d messages of %d bytes", where, run.Wire.DataBytes, run.Messages, c.payload)
			}
		}
		idle := side.res.Idle
		if idle.Heartbeats == 0 || idle.BytesPerHeartbeat <= 0 || idle.RSSKiB == 0 || idle.Seconds <= 0 {
			t.Errorf("%s idle: %+v: want heartbeats, bytes per heartbeat, VmRSS", side.name, idle)
		}
	}
	if z := r.Sizes; z.Tetherd <= 0 || z.MosquittoSub <= 0 || z.WithLibraries <= z.MosquittoSub || len(z.Libraries) == 0 {
		t.Errorf("sizes: %+v", z)
	}
	if len(r.Figures) == 0 {
		t.Fatal("no figures")
	}
	for _, f := range r.Figures {
		if f.Mosquitto == 0 || f.Ratio == nil {
			t.Errorf("figure %q: Mosquitto %v, ratio %v: every figure has both sides", f.Name, f.Mosquitto, f.Ratio)
			continue
		}
		if want := f.Tether / f.Mosquitto; *f.Ratio != want {
			t.Errorf("figure %q: ratio %v, want %v", f.Name, *f.Ratio, want)
		}
	}

	var md bytes.Buffer
	if err := write(r, config{}, &md); err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Figures {
		if !strings.Contains(md.String(), "| "+f.Name+" |") {
			t.Errorf("the markdown has no row for %q", f.Name)
		}
	}
	var js bytes.Buffer
	if err := write(r, config{json: true}, &js); err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(saved, js.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := render(saved, &again); err != nil {
		t.Fatal(err)
	}
	if again.String() != md.String() {
		t.Errorf("-render printed\n%s\nthe run printed\n%s", again.String(), md.String())
	}
}

func wsFrame(op byte, payload []byte, masked bool) []byte {
	b := []byte{0x80 | op}
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n < 1<<16:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if masked {
		b = append(b, 1, 2, 3, 4)
	}
	return append(b, payload...)
}

func mqttPacket(typ byte, body []byte) []byte {
	b := []byte{typ << 4}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			break
		}
	}
	return append(b, body...)
}

type seenFrame struct {
	typ  byte
	size uint64
}

func TestSplitter(t *testing.T) {
	head := []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
	long := bytes.Repeat([]byte("x"), 300)
	huge := bytes.Repeat([]byte("y"), 70000)
	tests := []struct {
		name   string
		proto  protocol
		stream [][]byte // frames, concatenated
		want   []seenFrame
	}{
		{"websocket, head then frames", websocketProtocol,
			[][]byte{head, wsFrame(1, []byte(`{"type":"message"}`), false), wsFrame(wsPing, nil, true), wsFrame(wsPong, nil, false)},
			[]seenFrame{{1, 20}, {wsPing, 6}, {wsPong, 2}}},
		{"websocket, 16- and 64-bit lengths, masked", websocketProtocol,
			[][]byte{head, wsFrame(1, long, true), wsFrame(2, huge, true)},
			[]seenFrame{{1, 8 + 300}, {2, 14 + 70000}}},
		{"mqtt, one-byte and two-byte lengths", mqttProtocol,
			[][]byte{mqttPacket(3, long), mqttPacket(4, []byte{0, 1}), mqttPacket(mqttPingreq, nil), mqttPacket(mqttPingresp, nil)},
			[]seenFrame{{3, 3 + 300}, {4, 4}, {mqttPingreq, 2}, {mqttPingresp, 2}}},
		{"mqtt, three-byte length", mqttProtocol,
			[][]byte{mqttPacket(3, huge)},
			[]seenFrame{{3, 4 + 70000}}},
	}
	for _, tt := range tests {
		stream := bytes.Join(tt.stream, nil)
		for _, chunk := range []int{1, 7, len(stream)} {
			t.Run(fmt.Sprintf("%s, %d-byte reads", tt.name, chunk), func(t *testing.T) {
				var got []seenFrame
				s := newSplitter(tt.proto, func(typ byte, size uint64) { got = append(got, seenFrame{typ, size}) })
				for b := stream; len(b) > 0; {
					n := min(chunk, len(b))
					s.feed(b[:n])
					b = b[n:]
				}
				if s.lost {
					t.Fatal("the stream was lost")
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("frames %v, want %v", got, tt.want)
				}
			})
		}
	}
}

func TestSplitterLosesGarbage(t *testing.T) {
	tests := []struct {
		name   string
		proto  protocol
		stream []byte
	}{
		{"mqtt length over four bytes", mqttProtocol, []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"http head without end", websocketProtocol, bytes.Repeat([]byte("a"), maxHTTPHead+10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSplitter(tt.proto, func(byte, uint64) { t.Error("a frame out of garbage") })
			s.feed(tt.stream)
			if !s.lost {
				t.Error("the splitter still follows the stream")
			}
		})
	}
}

// FuzzSplitter feeds arbitrary bytes in arbitrary reads: the splitter
// never panics, and the frames it reports never add up to more bytes than
// it was fed.
func FuzzSplitter(f *testing.F) {
	f.Add([]byte("HTTP/1.1 101 x\r\n\r\n\x89\x80\x01\x02\x03\x04"), uint8(3), true)
	f.Add(mqttPacket(3, []byte("payload")), uint8(1), false)
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, ws bool) {
		proto := mqttProtocol
		if ws {
			proto = websocketProtocol
		}
		var total uint64
		s := newSplitter(proto, func(_ byte, size uint64) { total += size })
		step := int(chunk) + 1
		for b := data; len(b) > 0; {
			n := min(step, len(b))
			s.feed(b[:n])
			b = b[n:]
		}
		if total > uint64(len(data)) {
			t.Errorf("frames of %d bytes out of %d bytes", total, len(data))
		}
	})
}

func TestPayload(t *testing.T) {
	sent := time.Unix(1_800_000_000, 123456789)
	for _, size := range []int{minPayload, 200, maxPayload} {
		p := makePayload("r12", 99999, sent, size)
		if len(p) != size || bytes.ContainsAny(p, "\n\r") {
			t.Fatalf("payload of %d bytes with a line break, want %d without: %q", len(p), size, p)
		}
		run, seq, got, err := parsePayload(p)
		if err != nil || run != "r12" || seq != 99999 || !got.Equal(sent) {
			t.Errorf("parsePayload = %q, %d, %v, %v", run, seq, got, err)
		}
	}
	for _, bad := range []string{"", "r1:2:3", "r1:x:3:pad", "r1:2:y:pad"} {
		if _, _, _, err := parsePayload([]byte(bad)); err == nil {
			t.Errorf("parsePayload(%q) did not fail", bad)
		}
	}
}

func TestLatencyStats(t *testing.T) {
	ms := time.Millisecond
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(100-i) * ms // 100 ms down to 1 ms
	}
	tests := []struct {
		name                string
		in                  []time.Duration
		p50, p99, max, mean float64
	}{
		{"none", nil, 0, 0, 0, 0},
		{"one", []time.Duration{3 * ms}, 3, 3, 3, 3},
		{"hundred, unsorted", hundred, 50, 99, 100, 50.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p50, p99, mx, mean := latencyStats(tt.in)
			if p50 != tt.p50 || p99 != tt.p99 || mx != tt.max || mean != tt.mean {
				t.Errorf("got %v %v %v %v, want %v %v %v %v", p50, p99, mx, mean, tt.p50, tt.p99, tt.max, tt.mean)
			}
		})
	}
}

func TestCollectorAccounts(t *testing.T) {
	c := newCollector("r1", 3, 2, true)
	now := time.Now()
	for _, seq := range []int{0, 2, 2, 1} {
		c.receive(seq, now, now)
	}
	select {
	case <-c.done:
		t.Fatal("done before the acks")
	default:
	}
	for range 3 {
		c.ack(now)
	}
	<-c.done
	if c.received != 3 || c.duplicates != 1 || c.acked != 3 || c.err != nil {
		t.Errorf("received %d, duplicates %d, acked %d, err %v", c.received, c.duplicates, c.acked, c.err)
	}
	out := newCollector("r2", 2, 1, false)
	out.receive(5, now, now)
	if out.err == nil {
		t.Error("a sequence number out of the run was taken")
	}
}

func TestParseLdd(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libmosquitto.so.2.0.11")
	if err := os.WriteFile(lib, make([]byte, 1234), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "libmosquitto.so.1")
	if err := os.Symlink(lib, link); err != nil {
		t.Fatal(err)
	}
	out := fmt.Sprintf("\tlinux-vdso.so.1 (0x00007ffd)\n\tlibmosquitto.so.1 => %s (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n", link)
	libs, err := parseLdd([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) != 1 || libs[0].Name != "libmosquitto.so.1" || libs[0].Path != lib || libs[0].Bytes != 1234 {
		t.Errorf("parseLdd = %+v, want libmosquitto.so.1 at %s, 1234 bytes", libs, lib)
	}
	if _, err := parseLdd([]byte("\tlibcjson.so.1 => not found\n")); err == nil {
		t.Error("a missing library was not an error")
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"-n", "5,10", "-payload", "100"}, true},
		{[]string{"-n", "0"}, false},
		{[]string{"-n", "ten"}, false},
		{[]string{"-payload", "10"}, false},
		{[]string{"-window", "200"}, true},
		{[]string{"-window", "201"}, false},
		{[]string{"-heartbeat", "4s"}, false},
		{[]string{"-heartbeat", "5500ms"}, false},
		{[]string{"extra"}, false},
	}
	for _, tt := range tests {
		_, err := parseFlags(tt.args, io.Discard)
		if (err == nil) != tt.ok {
			t.Errorf("parseFlags(%q): err %v, want ok %v", tt.args, err, tt.ok)
		}
	}
	c, err := parseFlags([]string{"-quick", "-n", "5"}, io.Discard)
	if err != nil || len(c.counts) != 2 || c.heartbeat != 5*time.Second {
		t.Errorf("-quick: %+v, %v", c, err)
	}
}

func TestRegistryLateAndLost(t *testing.T) {
	var reg registry
	c := newCollector("r1", 2, 2, true)
	reg.add(c)
	reg.failCurrent(errors.New("lost messages"))
	<-c.done
	reg.finish(c)
	reg.failCurrent(errors.New("no run is in progress: nothing to fail"))
	late, err := reg.deliver(makePayload("r1", 1, time.Now(), minPayload), time.Now())
	if err != nil || late != c {
		t.Fatalf("a late message: %v, %v", late, err)
	}
	late.ack(time.Now())
	if c.late != 1 || c.received != 0 || c.acked != 0 || c.err == nil {
		t.Errorf("late %d, received %d, acked %d, err %v: want one late message, nothing counted, the run failed", c.late, c.received, c.acked, c.err)
	}
	if _, err := reg.deliver(makePayload("r9", 0, time.Now(), minPayload), time.Now()); err == nil {
		t.Error("a message of a run the tool never made was taken")
	}
}

func TestTakeAcks(t *testing.T) {
	col := newCollector("r1", 3, 3, true)
	tests := []struct {
		name    string
		batch   bool
		pending int // ack requests already waiting for their answers
		want    []string
	}{
		{"one request per message", false, 1, []string{`{"id":2,"op":"ack","app":"a","ids":["m1"]}`, `{"id":3,"op":"ack","app":"a","ids":["m2"]}`, `{"id":4,"op":"ack","app":"a","ids":["m3"]}`}},
		{"batched", true, 0, []string{`{"id":2,"op":"ack","app":"a","ids":["m1","m2","m3"]}`}},
		{"batched, the last batch unanswered", true, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &appListener{app: "a", batch: tt.batch, pending: map[string][]*collector{}, nextID: 1}
			for i := range tt.pending {
				l.pending[fmt.Sprint("old", i)] = nil
			}
			for _, id := range []string{"m1", "m2", "m3"} {
				l.queue = append(l.queue, queuedAck{id, col})
			}
			got := strings.Split(strings.TrimSuffix(string(l.takeAcks()), "\n"), "\n")
			if tt.want == nil {
				if len(got) != 1 || got[0] != "" || len(l.queue) != 3 {
					t.Errorf("wrote %q while the last batch waits for its answer", got)
				}
				return
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("wrote\n%q\nwant\n%q", got, tt.want)
			}
			if len(l.queue) != 0 || len(l.pending) != tt.pending+len(tt.want) {
				t.Errorf("%d acks left in the queue, %d requests pending", len(l.queue), len(l.pending))
			}
		})
	}
}

func TestStatCPU(t *testing.T) {
	cases := []struct {
		name, stat string
		want       time.Duration
	}{
		{"tetherd", "4242 (tetherd) S 1 4242 4242 0 -1 4194560 1200 0 0 0 150 37 0 0 20 0 9 0 1234 1000 200", 1870 * time.Millisecond},
		{"a name with spaces and parentheses", "7 (a b) c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0", 70 * time.Millisecond},
		{"cut short", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 3", 0},
		{"not numbers", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 a b 0 0", 0},
		{"no name", "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := statCPU(tc.stat); got != tc.want {
				t.Fatalf("statCPU(%q) = %v, want %v", tc.stat, got, tc.want)
			}
		})
	}
}

func FuzzStatCPU(f *testing.F) {
	f.Add("4242 (tetherd) S 1 4242 4242 0 -1 4194560 1200 0 0 0 150 37 0 0 20 0 9 0 1234 1000 200")
	f.Fuzz(func(t *testing.T, stat string) {
		if statCPU(stat) < 0 {
			t.Fatalf("negative CPU time from %q", stat)
		}
	})
}
