// SPDX-License-Identifier: Apache-2.0

package power

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// encodeUevent is ParseUevent's inverse, with fields in key order.
func encodeUevent(ev Uevent) []byte {
	var b bytes.Buffer
	b.WriteString(ev.Action + "@" + ev.DevPath)
	b.WriteByte(0)
	for _, k := range slices.Sorted(maps.Keys(ev.Env)) {
		b.WriteString(k + "=" + ev.Env[k])
		b.WriteByte(0)
	}
	return b.Bytes()
}

func TestParseUevent(t *testing.T) {
	tests := []struct {
		name    string
		msg     string
		want    Uevent
		wantErr string
	}{
		{
			name: "battery change",
			msg:  "change@/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/BAT0\x00ACTION=change\x00DEVPATH=/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/BAT0\x00SUBSYSTEM=power_supply\x00POWER_SUPPLY_NAME=BAT0\x00POWER_SUPPLY_STATUS=Discharging\x00POWER_SUPPLY_CAPACITY=87\x00SEQNUM=4711\x00",
			want: Uevent{
				Action: "change", DevPath: "/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/BAT0", Subsystem: "power_supply",
				Env: map[string]string{
					"ACTION": "change", "DEVPATH": "/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/BAT0", "SUBSYSTEM": "power_supply",
					"POWER_SUPPLY_NAME": "BAT0", "POWER_SUPPLY_STATUS": "Discharging", "POWER_SUPPLY_CAPACITY": "87", "SEQNUM": "4711",
				},
			},
		},
		{
			name: "no trailing NUL, value with =",
			msg:  "add@/devices/virtual/net/lo\x00SUBSYSTEM=net\x00X=a=b",
			want: Uevent{Action: "add", DevPath: "/devices/virtual/net/lo", Subsystem: "net", Env: map[string]string{"SUBSYSTEM": "net", "X": "a=b"}},
		},
		{
			name: "header only",
			msg:  "remove@/devices/x\x00",
			want: Uevent{Action: "remove", DevPath: "/devices/x", Env: map[string]string{}},
		},
		{name: "empty", msg: "", wantErr: "not action@devpath"},
		{name: "udev's format", msg: "libudev\x00\xfe\xed\xca\xfe", wantErr: "not action@devpath"},
		{name: "no action", msg: "@/devices/x\x00", wantErr: "not action@devpath"},
		{name: "no devpath", msg: "change@\x00", wantErr: "not action@devpath"},
		{name: "field without =", msg: "change@/devices/x\x00SUBSYSTEM\x00", wantErr: `field "SUBSYSTEM" is not KEY=VALUE`},
		{name: "empty field", msg: "change@/devices/x\x00\x00A=1\x00", wantErr: `field "" is not KEY=VALUE`},
		{name: "empty key", msg: "change@/devices/x\x00=1\x00", wantErr: "is not KEY=VALUE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUevent([]byte(tt.msg))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseUevent(f *testing.F) {
	f.Add([]byte("change@/devices/platform/battery/power_supply/battery\x00ACTION=change\x00SUBSYSTEM=power_supply\x00POWER_SUPPLY_CAPACITY=42\x00"))
	f.Add([]byte("add@/x\x00"))
	f.Add([]byte("libudev\x00\xfe\xed\xca\xfe"))
	f.Add([]byte("a@b\x00c"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		ev, err := ParseUevent(msg)
		if err != nil {
			return
		}
		if ev.Action == "" || ev.DevPath == "" || strings.Contains(ev.Action, "@") {
			t.Fatalf("parsed %q into %+v", msg, ev)
		}
		if ev.Subsystem != ev.Env["SUBSYSTEM"] {
			t.Fatalf("subsystem %q, SUBSYSTEM=%q", ev.Subsystem, ev.Env["SUBSYSTEM"])
		}
		again, err := ParseUevent(encodeUevent(ev))
		if err != nil {
			t.Fatalf("re-encoded %+v does not parse: %v", ev, err)
		}
		if !reflect.DeepEqual(again, ev) {
			t.Fatalf("round trip changed %+v into %+v", ev, again)
		}
	})
}

// The kernel's uevent socket opens, delivers a uevent the test makes the
// kernel send, gives up when its context ends, and closes.
func TestUeventSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making the kernel send a uevent needs root (a write to a sysfs uevent file)")
	}
	// The loopback device is in every network namespace, and uevents of
	// network devices go to the namespace that holds them.
	trigger := "/sys/class/net/lo/uevent"
	if _, err := os.Stat(trigger); err != nil {
		t.Skip("no loopback uevent file to trigger: ", err)
	}
	sock, err := ListenUevents()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := os.WriteFile(trigger, []byte("change"), 0o200); err != nil {
		t.Skip("sysfs refuses a synthetic uevent: ", err)
	}
	for {
		ev, err := sock.Receive(ctx)
		if err != nil {
			t.Fatalf("no uevent from %s: %v", trigger, err)
		}
		if ev.Action == "change" && ev.Subsystem == "net" && filepath.Base(ev.DevPath) == "lo" {
			break
		}
	}

	cancelled, cancelNow := context.WithCancel(t.Context())
	cancelNow()
	if _, err := sock.Receive(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Receive with a cancelled context: %v, want context.Canceled", err)
	}
	waiting, stopWaiting := context.WithCancel(t.Context())
	time.AfterFunc(10*time.Millisecond, stopWaiting)
	for { // other uevents may come first
		if _, err := sock.Receive(waiting); err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Receive cancelled while waiting: %v, want context.Canceled", err)
			}
			break
		}
	}
	if err := sock.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
