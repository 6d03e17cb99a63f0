// SPDX-License-Identifier: Apache-2.0

package conftoml

import (
	"math"
	"reflect"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		want  map[string]any
		lines map[string]int // key path, dotted → line
	}{
		{
			name: "the shipped layout",
			doc:  "# agent\nserver = \"wss://push.example.com\" # the server\nserver_pins = [\n  'sha256//a', # first\n  \"sha256//b\",\n]\n\n[socket]\nmode = 0o660\npath = \"/run/t.sock\"\n[quota]\napp_bytes = 524_288\n",
			want: map[string]any{
				"server":      "wss://push.example.com",
				"server_pins": []any{"sha256//a", "sha256//b"},
				"socket":      map[string]any{"mode": int64(0o660), "path": "/run/t.sock"},
				"quota":       map[string]any{"app_bytes": int64(524288)},
			},
			lines: map[string]int{"server": 2, "server_pins": 3, "socket": 8, "socket.mode": 9, "socket.path": 10, "quota.app_bytes": 12},
		},
		{
			name: "dotted, quoted and inline keys",
			doc:  "apps.\"com.example.a\" = \"alice\"\napps.'b c' = 0\nsocket = { mode = \"0640\", path = 5 }\n\"q\\u00e9\" = true\n",
			want: map[string]any{
				"apps":    map[string]any{"com.example.a": "alice", "b c": int64(0)},
				"socket":  map[string]any{"mode": "0640", "path": int64(5)},
				"q\u00e9": true,
			},
			lines: map[string]int{"apps.com.example.a": 1, "apps.b c": 2, "socket.path": 3, "q\u00e9": 4},
		},
		{
			name: "numbers and escapes",
			doc:  "a = -17\nb = 0x1F\nc = 0b101\nd = 1.5e3\ne = -inf\nf = \"tab\\tquote\\\" \\U0001F600\"\ng = 'C:\\path'\nh = +0.25\ni = []\nj = {}\nk = [[1, 2], [\"x\"]]\r\nl = false\n",
			want: map[string]any{
				"a": int64(-17), "b": int64(31), "c": int64(5), "d": 1500.0, "e": math.Inf(-1),
				"f": "tab\tquote\" \U0001F600", "g": `C:\path`, "h": 0.25, "i": []any{}, "j": map[string]any{},
				"k": []any{[]any{int64(1), int64(2)}, []any{"x"}}, "l": false,
			},
			lines: map[string]int{"a": 1, "k": 11, "l": 12},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(d.Root, tt.want) {
				t.Errorf("got %#v\nwant %#v", d.Root, tt.want)
			}
			for key, line := range tt.lines {
				path := strings.Split(key, ".")
				if strings.HasPrefix(key, "apps.com") {
					path = []string{"apps", strings.TrimPrefix(key, "apps.")}
				}
				if got := d.Line(path...); got != line {
					t.Errorf("line of %s: %d, want %d", key, got, line)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		line      int
		msg       string
	}{
		{"open string", "a = 1\nserver = \"wss://h\n", 2, "basic strings cannot have new lines"},
		{"open literal", "a = 'x\n", 1, "literal strings cannot have new lines"},
		{"no value", "a =\n", 1, "expected a value"},
		{"no equals", "\n\nserver \"x\"\n", 3, "expected = after the key server"},
		{"two values", "a = 1 2\n", 1, "expected a new line after the value"},
		{"duplicate key", "a = 1\na = 2\n", 2, "key a is defined twice"},
		{"duplicate table", "[s]\n[t]\n[s]\n", 3, "table s is defined twice"},
		{"table over a value", "s = 1\n[s]\n", 2, "not a table"},
		{"dotted key over a value", "s = 1\ns.t = 2\n", 2, "not a table"},
		{"inline table extended", "s = {a = 1}\n[s]\n", 2, "table s is defined twice"},
		{"array of tables", "[[x]]\ny = 1\n", 1, "arrays of tables are not used"},
		{"multi-line string", "a = \"\"\"\nx\"\"\"\n", 1, "multi-line strings are not used"},
		{"date", "a = 1979-05-27\n", 1, "dates and times are not used"},
		{"time", "a = 07:32:00\n", 1, "dates and times are not used"},
		{"leading zero", "a = 0660\n", 1, `invalid value "0660"`},
		{"bad underscore", "a = 1__0\n", 1, `invalid value "1__0"`},
		{"too big", "a = 9223372036854775808\n", 1, "does not fit in 64 bits"},
		{"bare word", "a = yes\n", 1, `invalid value "yes"`},
		{"unclosed array", "a = [1,\n2\n", 3, "expected ] to end the array"},
		{"array without commas", "a = [1 2]\n", 1, "expected , or ]"},
		{"unclosed inline table", "a = {b = 1\n", 1, "expected , or } in the inline table"},
		{"bad escape", "a = \"\\q\"\n", 1, `unknown escape \q`},
		{"control character", "a = \"\x01\"\n", 1, "control character"},
		{"header without end", "[socket\n", 1, "expected ] to end the table header"},
		{"not UTF-8", "a = \"\xff\"\n", 1, "not UTF-8"},
		{"nested too deep", "a = " + strings.Repeat("[", 33) + strings.Repeat("]", 33) + "\n", 1, "nested more than 32 deep"},
		{"inline tables nested too deep", "a = " + strings.Repeat("{b = ", 33) + "1" + strings.Repeat("}", 33) + "\n", 1, "nested more than 32 deep"},
		{"a key of too many parts", strings.Repeat("a.", 32) + "b = 1\n", 1, "a key of more than 32 parts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			se, ok := err.(*Error)
			if !ok || se.Line != tt.line || !strings.Contains(se.Msg, tt.msg) {
				t.Errorf("Parse(%q) = %v, want line %d: ...%s...", tt.doc, err, tt.line, tt.msg)
			}
		})
	}
}

// FuzzParse checks the parser against go-toml, a complete TOML decoder:
// what Parse accepts, go-toml accepts as the same values, and every key
// Parse returns has a line.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"server = \"ws://h\"\n[socket]\nmode = \"0660\"\n[apps]\n\"a.b\" = 0\n",
		"socket = { mode = 0o640, path = 5 }\n[[x]]\ny = 1\n",
		"a.b.c = [1, {d = 2}]\n",
		"a = [\n 1, # one\n 2,\n]\nb = 'x'\nc = -0.5e-3\nd = 0xdead_beef\n",
		"[a.b]\nc = 1\n[a]\nd = 2\n",
		"x = \"\\u00e9\\n\"\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		d, err := Parse([]byte(doc))
		if err != nil {
			return
		}
		var want map[string]any
		if err := toml.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatalf("Parse accepted %q, which go-toml refuses: %v", doc, err)
		}
		if !sameValue(d.Root, want) {
			t.Fatalf("Parse(%q) = %#v, go-toml decodes %#v", doc, d.Root, want)
		}
		var walk func(path []string, t map[string]any)
		walk = func(path []string, tab map[string]any) {
			for k, v := range tab {
				p := append(append([]string(nil), path...), k)
				if d.Line(p...) == 0 {
					t.Fatalf("Parse(%q): no line for %q", doc, p)
				}
				if sub, ok := v.(map[string]any); ok {
					walk(p, sub)
				}
			}
		}
		walk(nil, d.Root)
	})
}

// sameValue is reflect.DeepEqual with NaN equal to NaN.
func sameValue(a, b any) bool {
	switch a := a.(type) {
	case float64:
		bf, ok := b.(float64)
		return ok && (a == bf || math.IsNaN(a) && math.IsNaN(bf))
	case []any:
		bl, ok := b.([]any)
		if !ok || len(a) != len(bl) {
			return false
		}
		for i := range a {
			if !sameValue(a[i], bl[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		bm, ok := b.(map[string]any)
		if !ok || len(a) != len(bm) {
			return false
		}
		for k, v := range a {
			if !sameValue(v, bm[k]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}
