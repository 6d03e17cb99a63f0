// SPDX-License-Identifier: Apache-2.0

package dbusdoor

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"tether/internal/busclient"
	"tether/ipc"
)

// FuzzSendOptions feeds Send's options decoder one option of any name and
// of one of several types: it takes a non-negative integer TTL of any
// integer type and a string priority, and refuses everything else with an
// InvalidArgument that names the option.
func FuzzSendOptions(f *testing.F) {
	f.Add("ttl", uint8(0), int64(60), "")
	f.Add("ttl", uint8(1), int64(-1), "")
	f.Add("ttl", uint8(2), int64(0), "1h")
	f.Add("priority", uint8(2), int64(0), "high")
	f.Add("priority", uint8(3), int64(1), "")
	f.Add("wait", uint8(3), int64(1), "")
	f.Add("ttl", uint8(4), int64(-1), "")
	f.Fuzz(func(t *testing.T, key string, kind uint8, n int64, s string) {
		var v any
		switch kind % 6 {
		case 0:
			v = uint32(n)
		case 1:
			v = n
		case 2:
			v = s
		case 3:
			v = n%2 == 0
		case 4:
			v = uint64(n)
		case 5:
			v = float64(n)
		}
		ttl, priority, err := sendOptions(map[string]busclient.Variant{key: busclient.MakeVariant(v)})
		if err != nil {
			if !errors.Is(err, ipc.ErrInvalidArgument) || !strings.Contains(err.Error(), strconv.Quote(key)) {
				t.Fatalf("error %q does not name option %q as an invalid argument", err, key)
			}
		}
		switch want, isInt := integer(v); {
		case key == "ttl" && isInt && want >= 0:
			if err != nil || ttl == nil || *ttl != want {
				t.Fatalf("ttl %#v: got %v, %v; want %d", v, ttl, err, want)
			}
		case key == "priority" && kind%6 == 2:
			if err != nil || priority != s || ttl != nil {
				t.Fatalf("priority %q: got %q, %v", s, priority, err)
			}
		default:
			if err == nil {
				t.Fatalf("option %q = %#v was taken", key, v)
			}
		}
	})
}

// FuzzRegisterOptions feeds RegisterWithOptions' options decoder one
// option of any name, a string or a number: it takes a string vapid and
// refuses everything else with an InvalidArgument that names the option.
func FuzzRegisterOptions(f *testing.F) {
	f.Add("vapid", true, "BKey", int64(0))
	f.Add("vapid", false, "", int64(7))
	f.Add("ttl", true, "1", int64(0))
	f.Fuzz(func(t *testing.T, key string, isString bool, s string, n int64) {
		var v any = n
		if isString {
			v = s
		}
		vapid, err := registerOptions(map[string]busclient.Variant{key: busclient.MakeVariant(v)})
		switch {
		case key == "vapid" && isString:
			if err != nil || vapid != s {
				t.Fatalf("vapid %q: got %q, %v", s, vapid, err)
			}
		case err == nil:
			t.Fatalf("option %q = %#v was taken", key, v)
		case !errors.Is(err, ipc.ErrInvalidArgument) || !strings.Contains(err.Error(), strconv.Quote(key)):
			t.Fatalf("error %q does not name option %q as an invalid argument", err, key)
		}
	})
}

func TestInteger(t *testing.T) {
	for _, tt := range []struct {
		v    any
		want int64
		ok   bool
	}{
		{uint8(255), 255, true},
		{int16(-3), -3, true},
		{uint16(65535), 65535, true},
		{int32(-7), -7, true},
		{uint32(math.MaxUint32), math.MaxUint32, true},
		{int64(math.MinInt64), math.MinInt64, true},
		{uint64(math.MaxUint64), math.MaxInt64, true},
		{"1", 0, false},
		{1.0, 0, false},
		{true, 0, false},
	} {
		if got, ok := integer(tt.v); got != tt.want || ok != tt.ok {
			t.Errorf("integer(%#v) = %d, %v; want %d, %v", tt.v, got, ok, tt.want, tt.ok)
		}
	}
}
