// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSizeBudgets runs cross/size.sh on binaries of chosen sizes: at a
// budget passes, a KiB over it fails and names the file.
func TestSizeBudgets(t *testing.T) {
	const kib = 1024
	tests := []struct {
		name    string
		files   map[string]int64 // path under OUT → size in bytes
		env     []string
		wantErr bool
		want    string // a line of the output
	}{
		{
			name:  "at the ARMv7 budgets",
			files: map[string]int64{"linux-armv7/tetherd": 6000 * kib, "linux-armv7/tetherctl": 2800*kib + kib - 1},
			want:  "linux-armv7/tetherd 6000 KiB (budget 6000)",
		},
		{
			name:    "tetherd over the ARMv7 budget",
			files:   map[string]int64{"linux-armv7/tetherd": 6001 * kib, "linux-armv7/tetherctl": kib},
			wantErr: true,
			want:    "linux-armv7/tetherd is 6001 KiB, over the budget of 6000 KiB",
		},
		{
			name:    "tetherctl over a budget set in the environment",
			files:   map[string]int64{"linux-armv7/tetherctl": 2001 * kib},
			env:     []string{"TETHERCTL_MAX_KIB=2000"},
			wantErr: true,
			want:    "linux-armv7/tetherctl is 2001 KiB, over the budget of 2000 KiB",
		},
		{
			name:    "another target over its ceiling",
			files:   map[string]int64{"linux-mips/tetherd": 9000 * kib},
			wantErr: true,
			want:    "linux-mips/tetherd is 9000 KiB, over the budget of",
		},
		{
			name:    "no binaries",
			files:   map[string]int64{},
			wantErr: true,
			want:    "no binaries",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := t.TempDir()
			for name, size := range tt.files {
				path := filepath.Join(out, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, nil, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(path, size); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command("./size.sh", out)
			cmd.Env = append(os.Environ(), "TETHERD_MAX_KIB=", "TETHERCTL_MAX_KIB=")
			cmd.Env = append(cmd.Env, tt.env...)
			b, err := cmd.CombinedOutput()
			if (err != nil) != tt.wantErr {
				t.Errorf("size.sh: %v, want failure %v\n%s", err, tt.wantErr, b)
			}
			if !strings.Contains(string(b), tt.want) {
				t.Errorf("output:\n%s\nwant a line with %q", b, tt.want)
			}
		})
	}
}
