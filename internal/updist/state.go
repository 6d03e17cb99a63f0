// SPDX-License-Identifier: Apache-2.0

package updist

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// registration is a connector's registration, as the state file keeps it.
type registration struct {
	Token       string `json:"token"`
	Service     string `json:"service"`
	Description string `json:"description,omitempty"`
	VAPID       string `json:"vapid,omitempty"`
	Endpoint    string `json:"endpoint"`
	// Version is the connector interface the app registered through:
	// 1 for Distributor1 (so Connector1), 2 for Distributor2.
	Version int `json:"version"`
}

// stateFile is the distributor's registrations on disk.
type stateFile struct {
	Registrations []registration `json:"registrations"`
}

// load reads the registrations; a missing file is none.
func load(path string) ([]registration, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the registrations: %w", err)
	}
	var s stateFile
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read the registrations in %s: %w", path, err)
	}
	for _, r := range s.Registrations {
		if err := checkRegistration(r.Service, r.Token); err != nil {
			return nil, fmt.Errorf("read the registrations in %s: %w", path, err)
		}
	}
	return s.Registrations, nil
}

// save writes the registrations to a new file, synced, then renames it
// over the old one and syncs the directory: a connector is told it is
// registered only once its registration would survive a power cut.
func save(path string, regs []registration) error {
	b, err := json.MarshalIndent(stateFile{Registrations: regs}, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save the registrations: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".unifiedpush-*")
	if err != nil {
		return fmt.Errorf("save the registrations: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("save the registrations: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// DefaultStateFile is where the registrations are kept unless configured
// otherwise: $XDG_STATE_HOME/tether/unifiedpush.json, else under
// ~/.local/state.
func DefaultStateFile(getenv func(string) string) (string, error) {
	dir := getenv("XDG_STATE_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("neither XDG_STATE_HOME nor HOME is set: no place for the registrations")
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "tether", "unifiedpush.json"), nil
}
