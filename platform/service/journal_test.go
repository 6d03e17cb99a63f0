// SPDX-License-Identifier: Apache-2.0

package service

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestJournalHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewJournalHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	log.Debug("dialing", "server", "wss://x")
	log.With("part", "link").Info("connected")
	log.WithGroup("g").Warn("slow", "ms", 900)
	log.Error("failed", "err", "boom")
	want := []string{
		`<7>level=DEBUG msg=dialing server=wss://x`,
		`<6>level=INFO msg=connected part=link`,
		`<4>level=WARN msg=slow g.ms=900`,
		`<3>level=ERROR msg=failed err=boom`,
	}
	got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("journal lines:\n%s\nwant:\n%s", buf.String(), strings.Join(want, "\n"))
	}
}

func TestJournalHandlerLevel(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewJournalHandler(&buf, nil))
	log.Debug("hidden")
	if buf.Len() != 0 {
		t.Errorf("debug logged at the default level: %q", buf.String())
	}
}

func TestJournalStream(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		env  string
		want bool
	}{
		{fmt.Sprintf("%d:%d", st.Dev, st.Ino), true},
		{fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), false},
		{"", false},
		{"garbage", false},
	}
	for _, tt := range tests {
		if got := JournalStream(f, env(map[string]string{"JOURNAL_STREAM": tt.env})); got != tt.want {
			t.Errorf("JOURNAL_STREAM=%q: %v, want %v", tt.env, got, tt.want)
		}
	}
}
