// SPDX-License-Identifier: Apache-2.0

package power

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// supply is what one /sys/class/power_supply entry says.
type supply struct {
	battery  bool
	online   bool // adapters
	status   string
	capacity int // batteries; UnknownCapacity if it reports none
}

// readSysfs reads every power supply under root. A device with no battery
// is on mains. With a battery, an adapter that is online means mains and
// adapters that are all offline mean battery; with no adapter reported,
// the battery's own status decides ("Discharging" is battery). Capacity is
// the mean of the batteries that report one.
func readSysfs(root string, log *slog.Logger) State {
	dir := filepath.Join(root, "class", "power_supply")
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("read power supplies; assuming mains", "err", err)
		}
		return State{Capacity: UnknownCapacity, Source: SourceNone}
	}
	if len(entries) == 0 {
		return State{Capacity: UnknownCapacity, Source: SourceNone}
	}

	var (
		batteries, discharging, adapters, online int
		capacitySum, capacities                  int
	)
	for _, e := range entries {
		s, ok := readSupply(filepath.Join(dir, e.Name()))
		if !ok {
			continue
		}
		if !s.battery {
			adapters++
			if s.online {
				online++
			}
			continue
		}
		batteries++
		if s.status == "Discharging" {
			discharging++
		}
		if s.capacity != UnknownCapacity {
			capacitySum += s.capacity
			capacities++
		}
	}

	st := State{Capacity: UnknownCapacity, Source: SourceSysfs}
	if capacities > 0 {
		st.Capacity = (capacitySum + capacities/2) / capacities
	}
	switch {
	case batteries == 0 || online > 0:
	case adapters > 0:
		st.OnBattery = true
	default:
		st.OnBattery = discharging > 0
	}
	return st
}

// readSupply reads one power supply; false when it is to be ignored: it
// vanished while being read, or it is a battery that is absent or powers
// a peripheral (a mouse or a headset) rather than the system.
func readSupply(dir string) (supply, bool) {
	s := supply{capacity: UnknownCapacity}
	typ, ok := attr(dir, "type")
	if !ok {
		return s, false
	}
	if typ != "Battery" {
		online, _ := attr(dir, "online")
		s.online = online == "1"
		return s, true
	}
	s.battery = true
	if present, ok := attr(dir, "present"); ok && present == "0" {
		return s, false
	}
	if scope, ok := attr(dir, "scope"); ok && scope == "Device" {
		return s, false
	}
	s.status, _ = attr(dir, "status")
	if c, ok := percent(dir, "capacity", ""); ok {
		s.capacity = c
	} else if c, ok := percent(dir, "energy_now", "energy_full"); ok {
		s.capacity = c
	} else if c, ok := percent(dir, "charge_now", "charge_full"); ok {
		s.capacity = c
	}
	return s, true
}

// percent reads attribute num as a percentage, or num/den·100 if den is
// set; false if either is missing or not a number. Values are clamped to
// 0..100: fuel gauges are known to report a little over.
func percent(dir, num, den string) (int, bool) {
	n, ok := intAttr(dir, num)
	if !ok {
		return 0, false
	}
	if den != "" {
		d, ok := intAttr(dir, den)
		if !ok || d <= 0 {
			return 0, false
		}
		n = int((float64(n)*100 + float64(d)/2) / float64(d))
	}
	return min(max(n, 0), 100), true
}

func intAttr(dir, name string) (int, bool) {
	v, ok := attr(dir, name)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

// attr reads a sysfs attribute without its trailing newline; false if it
// cannot be read.
func attr(dir, name string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}
