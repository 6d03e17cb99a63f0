// SPDX-License-Identifier: Apache-2.0

// Package conftoml reads the part of TOML (https://toml.io, version 1.0)
// that Tether's config files, tetherd's agent.toml and tether-server's
// server.toml, use: comments, [tables], key = value lines
// with bare, quoted and dotted keys, one-line basic and literal strings,
// integers (decimal, 0x, 0o, 0b, with underscores), floats, booleans,
// arrays (over several lines too) and inline tables.
//
// It exists for the size of the device's binary: a complete TOML decoder
// (go-toml) adds about 300 KiB on ARMv7, for a file of twenty keys. What
// the agent's settings never need, multi-line strings, dates and times and
// arrays of tables, is refused with the line it is on, as is anything
// that is not TOML.
package conftoml

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Doc is a parsed file. Its tables are map[string]any and its values
// string, int64, float64, bool, []any or map[string]any.
type Doc struct {
	Root  map[string]any
	lines map[string]int
	// explicit holds the tables that a [header], a dotted key or an
	// inline table defined, which may not be defined again.
	explicit map[string]bool
}

// Line is the line the key at path is written on, 0 if none.
func (d *Doc) Line(path ...string) int { return d.lines[keyID(path)] }

// Error is a syntax error.
type Error struct {
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Parse parses doc.
func Parse(doc []byte) (*Doc, error) {
	p := &parser{s: string(doc), line: 1}
	d := &Doc{Root: map[string]any{}, lines: map[string]int{}, explicit: map[string]bool{}}
	if !utf8.ValidString(p.s) {
		return nil, &Error{Line: 1, Msg: "the file is not UTF-8"}
	}
	var table []string
	for {
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.eof() {
			return d, nil
		}
		var err error
		if p.peek() == '[' {
			table, err = p.header(d)
		} else {
			err = p.keyValue(d, d.Root, nil, table)
		}
		if err == nil {
			err = p.endOfLine()
		}
		if err != nil {
			return nil, err
		}
	}
}

func keyID(path []string) string { return strings.Join(path, "\x00") }

// maxDepth bounds the nesting of arrays and inline tables, and maxParts
// the parts of a dotted key: the settings need two or three, and a file
// that nests thousands deep would take the parser quadratic time.
const (
	maxDepth = 32
	maxParts = 32
)

type parser struct {
	s     string
	i     int
	line  int
	depth int // arrays and inline tables open
}

// nest enters an array or inline table; leave with p.depth--.
func (p *parser) nest() error {
	if p.depth++; p.depth > maxDepth {
		return p.errorf("arrays and inline tables nested more than %d deep", maxDepth)
	}
	return nil
}

func (p *parser) eof() bool  { return p.i >= len(p.s) }
func (p *parser) peek() byte { return p.s[p.i] }

func (p *parser) errorf(format string, args ...any) error {
	return &Error{Line: p.line, Msg: fmt.Sprintf(format, args...)}
}

// skipSpace skips spaces and tabs.
func (p *parser) skipSpace() {
	for !p.eof() && (p.peek() == ' ' || p.peek() == '\t') {
		p.i++
	}
}

// skipComment skips a comment up to its newline. A comment may hold
// no control character but a tab.
func (p *parser) skipComment() error {
	if p.eof() || p.peek() != '#' {
		return nil
	}
	for !p.eof() && p.peek() != '\n' {
		if c := p.peek(); isControl(c) && !strings.HasPrefix(p.s[p.i:], "\r\n") {
			return p.errorf("control character %U in a comment", c)
		}
		p.i++
	}
	return nil
}

// isControl: TOML allows no control character but a tab in strings and
// comments.
func isControl(c byte) bool { return c < 0x20 && c != '\t' || c == 0x7f }

// skipBlank skips whitespace, newlines and comments.
func (p *parser) skipBlank() error {
	for {
		p.skipSpace()
		if err := p.skipComment(); err != nil {
			return err
		}
		if p.eof() {
			return nil
		}
		switch {
		case p.peek() == '\n':
			p.i++
			p.line++
		case strings.HasPrefix(p.s[p.i:], "\r\n"):
			p.i += 2
			p.line++
		default:
			return nil
		}
	}
}

// endOfLine expects the rest of the line to be blank or a comment.
func (p *parser) endOfLine() error {
	p.skipSpace()
	if err := p.skipComment(); err != nil {
		return err
	}
	if p.eof() || p.peek() == '\n' || strings.HasPrefix(p.s[p.i:], "\r\n") {
		return nil
	}
	return p.errorf("expected a new line after the value, found %q", p.rest())
}

// rest is what is left of the line, for error messages.
func (p *parser) rest() string {
	r := p.s[p.i:]
	if n := strings.IndexByte(r, '\n'); n >= 0 {
		r = r[:n]
	}
	if len(r) > 20 {
		r = r[:20] + "..."
	}
	return r
}

// header reads a [table] line and returns the table's path.
func (p *parser) header(d *Doc) ([]string, error) {
	if strings.HasPrefix(p.s[p.i:], "[[") {
		return nil, p.errorf("arrays of tables are not used in this file")
	}
	p.i++
	p.skipSpace()
	path, err := p.key()
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.eof() || p.peek() != ']' {
		return nil, p.errorf("expected ] to end the table header")
	}
	p.i++
	if _, err := d.table(d.Root, nil, path, p.line); err != nil {
		return nil, p.errorf("%v", err)
	}
	id := keyID(path)
	if d.explicit[id] {
		return nil, p.errorf("table %s is defined twice", strings.Join(path, "."))
	}
	d.explicit[id] = true
	return path, nil
}

// table returns the table at path under root, creating the missing ones;
// root is the table at rootPath in the document.
func (d *Doc) table(root map[string]any, rootPath, path []string, line int) (map[string]any, error) {
	t := root
	for i, k := range path {
		abs := join(rootPath, path[:i+1])
		v, ok := t[k]
		if !ok {
			nt := map[string]any{}
			t[k] = nt
			d.lines[keyID(abs)] = line
			t = nt
			continue
		}
		nt, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("key %s already holds a value that is not a table", strings.Join(abs, "."))
		}
		t = nt
	}
	return t, nil
}

// join returns a new path of a followed by b.
func join(a, b []string) []string {
	return append(append(make([]string, 0, len(a)+len(b)), a...), b...)
}

// keyValue reads key = value into the table at prefix under root, which
// is the table at rootPath in the document.
func (p *parser) keyValue(d *Doc, root map[string]any, rootPath, prefix []string) error {
	key, err := p.key()
	if err != nil {
		return err
	}
	p.skipSpace()
	if p.eof() || p.peek() != '=' {
		return p.errorf("expected = after the key %s", strings.Join(key, "."))
	}
	p.i++
	p.skipSpace()
	rel := join(prefix, key)
	parent, err := d.table(root, rootPath, rel[:len(rel)-1], p.line)
	if err != nil {
		return p.errorf("%v", err)
	}
	full := join(rootPath, rel)
	for i := len(rootPath) + len(prefix) + 1; i < len(full); i++ {
		d.explicit[keyID(full[:i])] = true // dotted keys define their tables
	}
	last := rel[len(rel)-1]
	if _, ok := parent[last]; ok {
		return p.errorf("key %s is defined twice", strings.Join(full, "."))
	}
	d.lines[keyID(full)] = p.line
	v, err := p.value(d, full)
	if err != nil {
		return err
	}
	parent[last] = v
	return nil
}

// key reads a bare, quoted or dotted key.
func (p *parser) key() ([]string, error) {
	var path []string
	for {
		p.skipSpace()
		if p.eof() {
			return nil, p.errorf("expected a key")
		}
		var k string
		switch c := p.peek(); {
		case c == '"':
			s, err := p.basicString()
			if err != nil {
				return nil, err
			}
			k = s
		case c == '\'':
			s, err := p.literalString()
			if err != nil {
				return nil, err
			}
			k = s
		default:
			start := p.i
			for !p.eof() && isBare(p.peek()) {
				p.i++
			}
			if p.i == start {
				return nil, p.errorf("expected a key, found %q", p.rest())
			}
			k = p.s[start:p.i]
		}
		if path = append(path, k); len(path) > maxParts {
			return nil, p.errorf("a key of more than %d parts", maxParts)
		}
		p.skipSpace()
		if p.eof() || p.peek() != '.' {
			return path, nil
		}
		p.i++
	}
}

func isBare(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// value reads a value; path is its key, for inline tables.
func (p *parser) value(d *Doc, path []string) (any, error) {
	if p.eof() {
		return nil, p.errorf("expected a value")
	}
	switch c := p.peek(); {
	case strings.HasPrefix(p.s[p.i:], `"""`), strings.HasPrefix(p.s[p.i:], "'''"):
		return nil, p.errorf("multi-line strings are not used in this file")
	case c == '"':
		return p.basicString()
	case c == '\'':
		return p.literalString()
	case c == '[':
		return p.array(d, path)
	case c == '{':
		return p.inlineTable(d, path)
	}
	start := p.i
	for !p.eof() && (isBare(p.peek()) || strings.IndexByte("+.:", p.peek()) >= 0) {
		p.i++
	}
	tok := p.s[start:p.i]
	switch tok {
	case "":
		return nil, p.errorf("expected a value, found %q", p.rest())
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return p.number(tok)
}

func (p *parser) basicString() (string, error) {
	p.i++ // the quote
	var b strings.Builder
	for {
		if p.eof() {
			return "", p.errorf("basic strings cannot have new lines")
		}
		c := p.peek()
		switch {
		case c == '"':
			p.i++
			return b.String(), nil
		case c == '\n' || c == '\r':
			return "", p.errorf("basic strings cannot have new lines")
		case c == '\\':
			r, err := p.escape()
			if err != nil {
				return "", err
			}
			b.WriteRune(r)
			continue
		case isControl(c):
			return "", p.errorf("control character %U in a string", c)
		}
		b.WriteByte(c)
		p.i++
	}
}

// escape reads an escape sequence of a basic string.
func (p *parser) escape() (rune, error) {
	if p.i+1 >= len(p.s) {
		return 0, p.errorf("basic strings cannot have new lines")
	}
	c := p.s[p.i+1]
	p.i += 2
	switch c {
	case 'b':
		return '\b', nil
	case 't':
		return '\t', nil
	case 'n':
		return '\n', nil
	case 'f':
		return '\f', nil
	case 'r':
		return '\r', nil
	case '"':
		return '"', nil
	case '\\':
		return '\\', nil
	case 'u', 'U':
		n := 4
		if c == 'U' {
			n = 8
		}
		if p.i+n > len(p.s) {
			return 0, p.errorf("short \\%c escape", c)
		}
		v, err := strconv.ParseUint(p.s[p.i:p.i+n], 16, 32)
		if err != nil || !utf8.ValidRune(rune(v)) {
			return 0, p.errorf("bad \\%c escape %q", c, p.s[p.i:p.i+n])
		}
		p.i += n
		return rune(v), nil
	}
	return 0, p.errorf("unknown escape \\%c", c)
}

func (p *parser) literalString() (string, error) {
	p.i++ // the quote
	start := p.i
	for {
		if p.eof() || p.peek() == '\n' || p.peek() == '\r' {
			return "", p.errorf("literal strings cannot have new lines")
		}
		c := p.peek()
		if c == '\'' {
			p.i++
			return p.s[start : p.i-1], nil
		}
		if isControl(c) {
			return "", p.errorf("control character %U in a string", c)
		}
		p.i++
	}
}

// array reads an array, which may span lines and end with a comma.
func (p *parser) array(d *Doc, path []string) ([]any, error) {
	p.i++ // [
	defer func() { p.depth-- }()
	if err := p.nest(); err != nil {
		return nil, err
	}
	list := []any{}
	for {
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.eof() {
			return nil, p.errorf("expected ] to end the array")
		}
		if p.peek() == ']' {
			p.i++
			return list, nil
		}
		v, err := p.value(d, path)
		if err != nil {
			return nil, err
		}
		list = append(list, v)
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.eof() {
			return nil, p.errorf("expected ] to end the array")
		}
		switch p.peek() {
		case ',':
			p.i++
		case ']':
			p.i++
			return list, nil
		default:
			return nil, p.errorf("expected , or ] in the array, found %q", p.rest())
		}
	}
}

// inlineTable reads { k = v, ... } on one line.
func (p *parser) inlineTable(d *Doc, path []string) (map[string]any, error) {
	p.i++ // {
	defer func() { p.depth-- }()
	if err := p.nest(); err != nil {
		return nil, err
	}
	t := map[string]any{}
	d.explicit[keyID(path)] = true
	p.skipSpace()
	if !p.eof() && p.peek() == '}' {
		p.i++
		return t, nil
	}
	for {
		p.skipSpace()
		if err := p.keyValue(d, t, path, nil); err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.eof() {
			return nil, p.errorf("expected } to end the inline table")
		}
		switch p.peek() {
		case ',':
			p.i++
		case '}':
			p.i++
			return t, nil
		default:
			return nil, p.errorf("expected , or } in the inline table, found %q", p.rest())
		}
	}
}

// number reads an integer or a float.
func (p *parser) number(tok string) (any, error) {
	bad := func() error { return p.errorf("invalid value %q", tok) }
	if strings.Contains(tok, ":") || len(tok) >= 10 && tok[4] == '-' && tok[7] == '-' && isDigits(tok[:4]) {
		return nil, p.errorf("dates and times are not used in this file")
	}
	switch tok {
	case "inf", "+inf":
		return math.Inf(1), nil
	case "-inf":
		return math.Inf(-1), nil
	case "nan", "+nan", "-nan":
		return math.NaN(), nil
	}
	if len(tok) > 2 && tok[0] == '0' {
		if base := map[byte]int{'x': 16, 'o': 8, 'b': 2}[tok[1]]; base != 0 {
			digits := tok[2:]
			if !validUnderscores(digits, base == 16) {
				return nil, bad()
			}
			n, err := strconv.ParseInt(strings.ReplaceAll(digits, "_", ""), base, 64)
			if err != nil || strings.ContainsAny(digits, "+-") {
				return nil, bad()
			}
			return n, nil
		}
	}
	if !validUnderscores(tok, false) {
		return nil, bad()
	}
	clean := strings.ReplaceAll(tok, "_", "")
	digits := strings.TrimLeft(clean, "+-")
	if len(clean)-len(digits) > 1 || digits == "" {
		return nil, bad()
	}
	if strings.ContainsAny(digits, ".eE") {
		mantissa := digits
		if e := strings.IndexAny(digits, "eE"); e >= 0 {
			mantissa = digits[:e]
		}
		intPart, frac, dot := strings.Cut(mantissa, ".")
		if !isDigits(intPart) || len(intPart) > 1 && intPart[0] == '0' || dot && !isDigits(frac) {
			return nil, bad()
		}
		f, err := strconv.ParseFloat(clean, 64)
		if err != nil {
			return nil, bad()
		}
		return f, nil
	}
	if len(digits) > 1 && digits[0] == '0' || !isDigits(digits) {
		return nil, bad()
	}
	n, err := strconv.ParseInt(clean, 10, 64)
	if err != nil {
		return nil, p.errorf("integer %s does not fit in 64 bits", tok)
	}
	return n, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// validUnderscores: each underscore sits between two digits, hex ones
// if hex.
func validUnderscores(tok string, hex bool) bool {
	isDigit := func(c byte) bool {
		return '0' <= c && c <= '9' || hex && ('a' <= c && c <= 'f' || 'A' <= c && c <= 'F')
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] == '_' && (i == 0 || i == len(tok)-1 || !isDigit(tok[i-1]) || !isDigit(tok[i+1])) {
			return false
		}
	}
	return true
}
