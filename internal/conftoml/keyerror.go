// SPDX-License-Identifier: Apache-2.0

package conftoml

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// KeyError is a bad setting in a config file, or a syntax error when Key
// is empty: what an operator needs to find it is the file, the line and
// the key.
type KeyError struct {
	File string
	Line int
	Key  string // as written in TOML (KeyName); empty for a syntax error
	Err  error
}

func (e *KeyError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: %s: %v", e.File, e.Line, e.Key, e.Err)
}

func (e *KeyError) Unwrap() error { return e.Err }

// ParseFile parses doc, the contents of the file at path, and reports a
// syntax error as a KeyError naming path.
func ParseFile(path string, doc []byte) (*Doc, error) {
	d, err := Parse(doc)
	if err != nil {
		var se *Error
		if errors.As(err, &se) {
			return nil, &KeyError{File: path, Line: se.Line, Err: errors.New(se.Msg)}
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// TypeName describes a parsed value for an error message.
func TypeName(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case int64:
		return fmt.Sprintf("the integer %d", v)
	case float64:
		return fmt.Sprintf("the float %v", v)
	case bool:
		return fmt.Sprintf("%v", v)
	case []any:
		return "an array"
	}
	return "a table"
}

// KeyName writes a key as TOML does, quoting the parts that need it
// (app IDs with dots, for one).
func KeyName(key []string) string {
	parts := make([]string, len(key))
	for i, k := range key {
		bare := k != "" && strings.IndexFunc(k, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
		}) < 0
		if bare {
			parts[i] = k
		} else {
			parts[i] = strconv.Quote(k)
		}
	}
	return strings.Join(parts, ".")
}
