// SPDX-License-Identifier: Apache-2.0

package power

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// writeTree writes files (paths relative to root, contents) as a sysfs
// tree would have them, each with its trailing newline. Each file is
// replaced whole, as a sysfs attribute changes, for a watcher may be
// reading.
func writeTree(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p+".new", []byte(content+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(p+".new", p); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	acDir  = "class/power_supply/AC/"
	batDir = "class/power_supply/BAT0/"
)

func TestReadSysfs(t *testing.T) {
	w, err := New(Config{LowBattery: 15})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		files map[string]string // nil: no power_supply directory at all
		want  State
	}{
		{
			name: "no power_supply directory",
			want: State{Capacity: UnknownCapacity, Source: SourceNone, Mode: ModeMains},
		},
		{
			name:  "empty power_supply directory",
			files: map[string]string{},
			want:  State{Capacity: UnknownCapacity, Source: SourceNone, Mode: ModeMains},
		},
		{
			name:  "mains only",
			files: map[string]string{acDir + "type": "Mains", acDir + "online": "1"},
			want:  State{Capacity: UnknownCapacity, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name:  "battery discharging, no adapter",
			files: map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "80"},
			want:  State{OnBattery: true, Capacity: 80, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name:  "battery low",
			files: map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "9"},
			want:  State{OnBattery: true, Capacity: 9, Source: SourceSysfs, Mode: ModeLow},
		},
		{
			name:  "battery at the threshold is low",
			files: map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "15"},
			want:  State{OnBattery: true, Capacity: 15, Source: SourceSysfs, Mode: ModeLow},
		},
		{
			name:  "battery full, no adapter",
			files: map[string]string{batDir + "type": "Battery", batDir + "status": "Full", batDir + "capacity": "100"},
			want:  State{Capacity: 100, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name: "adapter offline, battery status unknown",
			files: map[string]string{
				acDir + "type": "Mains", acDir + "online": "0",
				batDir + "type": "Battery", batDir + "status": "Unknown", batDir + "capacity": "55",
			},
			want: State{OnBattery: true, Capacity: 55, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name: "adapter online, battery charging and low",
			files: map[string]string{
				acDir + "type": "Mains", acDir + "online": "1",
				batDir + "type": "Battery", batDir + "status": "Charging", batDir + "capacity": "5",
			},
			want: State{Capacity: 5, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name: "USB supply online outranks a discharging status",
			files: map[string]string{
				"class/power_supply/usb/type": "USB", "class/power_supply/usb/online": "1",
				batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "60",
			},
			want: State{Capacity: 60, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name: "peripheral battery is not the system's",
			files: map[string]string{
				"class/power_supply/hid-mouse/type": "Battery", "class/power_supply/hid-mouse/scope": "Device",
				"class/power_supply/hid-mouse/status": "Discharging", "class/power_supply/hid-mouse/capacity": "3",
			},
			want: State{Capacity: UnknownCapacity, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name: "absent battery",
			files: map[string]string{
				batDir + "type": "Battery", batDir + "present": "0", batDir + "status": "Discharging", batDir + "capacity": "0",
			},
			want: State{Capacity: UnknownCapacity, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name: "two batteries average",
			files: map[string]string{
				batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "10",
				"class/power_supply/BAT1/type": "Battery", "class/power_supply/BAT1/status": "Unknown", "class/power_supply/BAT1/capacity": "51",
			},
			want: State{OnBattery: true, Capacity: 31, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name: "capacity from energy",
			files: map[string]string{
				batDir + "type": "Battery", batDir + "status": "Discharging",
				batDir + "energy_now": "12000000", batDir + "energy_full": "48000000",
			},
			want: State{OnBattery: true, Capacity: 25, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name: "capacity from charge",
			files: map[string]string{
				batDir + "type": "Battery", batDir + "status": "Discharging",
				batDir + "charge_now": "500000", batDir + "charge_full": "4000000",
			},
			want: State{OnBattery: true, Capacity: 13, Source: SourceSysfs, Mode: ModeLow},
		},
		{
			name:  "capacity over 100 is clamped",
			files: map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "103"},
			want:  State{OnBattery: true, Capacity: 100, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name:  "capacity unreadable is unknown, never low",
			files: map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "lots"},
			want:  State{OnBattery: true, Capacity: UnknownCapacity, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name: "supply without a type is ignored",
			files: map[string]string{
				"class/power_supply/odd/online": "1",
				batDir + "type":                 "Battery", batDir + "status": "Discharging", batDir + "capacity": "70",
			},
			want: State{OnBattery: true, Capacity: 70, Source: SourceSysfs, Mode: ModeBattery},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.files != nil {
				if err := os.MkdirAll(filepath.Join(root, "class/power_supply"), 0o755); err != nil {
					t.Fatal(err)
				}
				writeTree(t, root, tt.files)
			}
			if got := w.mode(readSysfs(root, slog.New(slog.DiscardHandler))); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMode(t *testing.T) {
	tests := []struct {
		low   int
		state State
		want  Mode
	}{
		{15, State{OnBattery: false, Capacity: 3}, ModeMains},
		{15, State{OnBattery: true, Capacity: 16}, ModeBattery},
		{15, State{OnBattery: true, Capacity: 15}, ModeLow},
		{15, State{OnBattery: true, Capacity: 0}, ModeLow},
		{15, State{OnBattery: true, Capacity: UnknownCapacity}, ModeBattery},
		{0, State{OnBattery: true, Capacity: DefaultLowBattery}, ModeLow},
		{-1, State{OnBattery: true, Capacity: 0}, ModeBattery},
		{100, State{OnBattery: true, Capacity: 100}, ModeLow},
	}
	for _, tt := range tests {
		w, err := New(Config{LowBattery: tt.low})
		if err != nil {
			t.Fatal(err)
		}
		if got := w.mode(tt.state).Mode; got != tt.want {
			t.Errorf("LowBattery %d, %+v: mode %s, want %s", tt.low, tt.state, got, tt.want)
		}
	}
	if _, err := New(Config{LowBattery: 101}); err == nil {
		t.Error("New accepted a low battery threshold of 101%")
	}
}
