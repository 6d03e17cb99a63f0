// SPDX-License-Identifier: Apache-2.0

package clockknob

import (
	"testing"
	"time"
)

func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		value   string
		want    time.Duration
		wantErr bool
	}{
		{"", 0, false},
		{"90m", 90 * time.Minute, false},
		{"-2h", -2 * time.Hour, false},
		{"3", 0, true},
		{"soon", 0, true},
	} {
		got, err := FromEnv(func(k string) string {
			if k != Env {
				t.Fatalf("read %q, want %q", k, Env)
			}
			return tc.value
		})
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("FromEnv(%q) = %v, %v; want %v, error %v", tc.value, got, err, tc.want, tc.wantErr)
		}
	}
}
