// SPDX-License-Identifier: Apache-2.0

package procfs

import (
	"reflect"
	"testing"
)

// parseCase is a parser's input and what it should give: want, or an
// error.
type parseCase[T any] struct {
	name    string
	in      string
	want    T
	wantErr bool
}

func testParser[T any](t *testing.T, parse func([]byte) (T, error), cases []parseCase[T]) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse([]byte(tc.in))
			switch {
			case tc.wantErr && err == nil:
				t.Errorf("parsed %q as %v, want an error", tc.in, got)
			case !tc.wantErr && (err != nil || !reflect.DeepEqual(got, tc.want)):
				t.Errorf("parsed %q as %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseFields(t *testing.T) {
	testParser(t, parseFields, []parseCase[map[string]uint64]{
		{
			name: "status",
			in: "Name:\ttether server\nState:\tS (sleeping)\nPid:\t4242\nVmHWM:\t   10240 kB\nVmRSS:\t    9120 kB\n" +
				"Threads:\t7\nCpus_allowed:\tff\nvoluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t3\n",
			want: map[string]uint64{"Pid": 4242, "VmHWM": 10240, "VmRSS": 9120, "Threads": 7,
				"voluntary_ctxt_switches": 150, "nonvoluntary_ctxt_switches": 3},
		},
		{
			name: "meminfo without a final newline",
			in:   "MemTotal:        8038468 kB\nMemFree:          512000 kB\nSlab:             204800 kB",
			want: map[string]uint64{"MemTotal": 8038468, "MemFree": 512000, "Slab": 204800},
		},
		{
			name: "lines without a colon or a value are passed over",
			in:   "garbage\nEmpty:\nGroups:\t\nVmRSS: 1 kB\n",
			want: map[string]uint64{"VmRSS": 1},
		},
		{name: "empty", in: "", wantErr: true},
		{name: "no numbers", in: "Name:\tsh\nState:\tR (running)\n", wantErr: true},
		{name: "not a status file", in: "4242 (sh) R 1 4242\n", wantErr: true},
	})
}

func TestParseCPUTicks(t *testing.T) {
	// Fields 3 to 15 of /proc/PID/stat, utime 250 and stime 75, and more
	// after them.
	const rest = " S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 9 0 100 0 0"
	testParser(t, parseCPUTicks, []parseCase[uint64]{
		{name: "plain", in: "4242 (tether-server)" + rest, want: 325},
		{name: "name with spaces", in: "4242 (tether server)" + rest, want: 325},
		{name: "name with parentheses", in: "4242 (a) S 1 (b))" + rest, want: 325},
		{name: "name like fields", in: "4242 (x) 1 2 3 4 5 6 7 8 9 10 11 12 13)" + rest, want: 325},
		{name: "ending at stime", in: "4242 (sh) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75", want: 325},
		{name: "truncated", in: "4242 (short) S 1", wantErr: true},
		{name: "no command name", in: "4242 sh S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0", wantErr: true},
		{name: "utime not a number", in: "4242 (sh) S 1 4242 4242 0 -1 4194560 1500 0 0 0 x 75 0", wantErr: true},
		{name: "stime negative", in: "4242 (sh) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 -75 0", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	})
}

func TestParseOpenFileLimit(t *testing.T) {
	const header = "Limit                     Soft Limit           Hard Limit           Units     \n" +
		"Max cpu time              unlimited            unlimited            seconds   \n"
	testParser(t, parseOpenFileLimit, []parseCase[int]{
		{name: "soft below hard", in: header + "Max open files            1024                 20000                files     \n", want: 1024},
		{name: "last line without newline", in: header + "Max open files            20000                20000                files", want: 20000},
		{name: "unlimited", in: header + "Max open files            unlimited            unlimited            files     \n", want: unlimitedFiles},
		{name: "no such line", in: header, wantErr: true},
		{name: "line without a value", in: header + "Max open files\n", wantErr: true},
		{name: "value not a number", in: header + "Max open files            many                 many                 files     \n", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	})
}
