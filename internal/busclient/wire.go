// SPDX-License-Identifier: Apache-2.0

package busclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
)

// Variant is a value of type v: its signature and the value.
type Variant struct {
	Sig   string
	Value any
}

// MakeVariant wraps v, of one of the types this package encodes, in a
// Variant of its signature.
func MakeVariant(v any) Variant {
	sig, _ := signatureOf(v)
	return Variant{Sig: sig, Value: v}
}

// ObjectPath is a value of type o.
type ObjectPath string

// maxDepth bounds the nesting of containers, as the D-Bus specification
// does (32 arrays and 32 structs).
const maxDepth = 64

// encoder writes values in little-endian order, aligned from the start of
// the message.
type encoder struct{ b []byte }

func (e *encoder) align(n int) {
	for len(e.b)%n != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) uint32(v uint32) {
	e.align(4)
	e.b = binary.LittleEndian.AppendUint32(e.b, v)
}

func (e *encoder) string(s string) {
	e.uint32(uint32(len(s)))
	e.b = append(append(e.b, s...), 0)
}

func (e *encoder) signature(s string) {
	e.b = append(append(append(e.b, byte(len(s))), s...), 0)
}

// signatureOf is the D-Bus type of the Go values this package encodes.
func signatureOf(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return "s", nil
	case ObjectPath:
		return "o", nil
	case bool:
		return "b", nil
	case uint32:
		return "u", nil
	case int64:
		return "x", nil
	case []string:
		return "as", nil
	case []byte:
		return "ay", nil
	case map[string]string:
		return "a{ss}", nil
	case map[string]Variant:
		for k, x := range v {
			if x.Sig == "" {
				return "", fmt.Errorf("busclient: cannot encode %q, a %T", k, x.Value)
			}
		}
		return "a{sv}", nil
	case Variant:
		if v.Sig == "" {
			return "", fmt.Errorf("busclient: cannot encode a variant of a %T", v.Value)
		}
		return "v", nil
	default:
		return "", fmt.Errorf("busclient: cannot encode a %T", v)
	}
}

// value writes v, of a type signatureOf knows.
func (e *encoder) value(v any) {
	switch v := v.(type) {
	case string:
		e.string(v)
	case ObjectPath:
		e.string(string(v))
	case bool:
		b := uint32(0)
		if v {
			b = 1
		}
		e.uint32(b)
	case uint32:
		e.uint32(v)
	case int64:
		e.align(8)
		e.b = binary.LittleEndian.AppendUint64(e.b, uint64(v))
	case []string:
		e.array(false, func() {
			for _, s := range v {
				e.string(s)
			}
		})
	case []byte:
		e.array(false, func() { e.b = append(e.b, v...) })
	case map[string]string:
		e.array(true, func() {
			for k, s := range v {
				e.align(8)
				e.string(k)
				e.string(s)
			}
		})
	case map[string]Variant:
		e.array(true, func() {
			for k, s := range v {
				e.align(8)
				e.string(k)
				e.value(s)
			}
		})
	case Variant:
		e.signature(v.Sig)
		e.value(v.Value)
	}
}

// array writes an array's length and its elements; entries aligned to 8
// (dict entries, structs) are padded to 8 before the first.
func (e *encoder) array(align8 bool, elements func()) {
	e.uint32(0)
	at := len(e.b)
	if align8 {
		e.align(8)
	}
	start := len(e.b)
	elements()
	binary.LittleEndian.PutUint32(e.b[at-4:], uint32(len(e.b)-start))
}

// decoder reads values of a message.
type decoder struct {
	b     []byte
	i     int
	order binary.ByteOrder
	// base is the offset of b[0] in the message, for alignment.
	base int
	// files are the message's descriptors, which its h values index.
	files []*os.File
}

var errShort = errors.New("busclient: message cut short")

func (d *decoder) align(n int) error {
	for (d.base+d.i)%n != 0 {
		if d.i >= len(d.b) {
			return errShort
		}
		d.i++
	}
	return nil
}

func (d *decoder) take(n int) ([]byte, error) {
	if n < 0 || len(d.b)-d.i < n {
		return nil, errShort
	}
	p := d.b[d.i : d.i+n]
	d.i += n
	return p, nil
}

func (d *decoder) fixed(size int) ([]byte, error) {
	if err := d.align(size); err != nil {
		return nil, err
	}
	return d.take(size)
}

func (d *decoder) uint32() (uint32, error) {
	p, err := d.fixed(4)
	if err != nil {
		return 0, err
	}
	return d.order.Uint32(p), nil
}

func (d *decoder) string() (string, error) {
	n, err := d.uint32()
	if err != nil {
		return "", err
	}
	p, err := d.take(int(min(n, math.MaxInt32)) + 1)
	if err != nil {
		return "", err
	}
	if p[len(p)-1] != 0 {
		return "", errors.New("busclient: a string without its NUL")
	}
	return string(p[:len(p)-1]), nil
}

func (d *decoder) signature() (string, error) {
	n, err := d.take(1)
	if err != nil {
		return "", err
	}
	p, err := d.take(int(n[0]) + 1)
	if err != nil {
		return "", err
	}
	if p[len(p)-1] != 0 {
		return "", errors.New("busclient: a signature without its NUL")
	}
	return string(p[:len(p)-1]), nil
}

// nextType splits the first complete type off sig.
func nextType(sig string) (string, string, error) {
	if sig == "" {
		return "", "", errors.New("busclient: empty signature")
	}
	switch sig[0] {
	case 'a':
		elem, rest, err := nextType(sig[1:])
		return "a" + elem, rest, err
	case '(', '{':
		end := byte(')')
		if sig[0] == '{' {
			end = '}'
		}
		rest := sig[1:]
		n := 0
		for {
			if rest == "" {
				return "", "", fmt.Errorf("busclient: unterminated %q in a signature", sig[0])
			}
			if rest[0] == end {
				if n == 0 || sig[0] == '{' && n != 2 {
					return "", "", fmt.Errorf("busclient: bad container in signature %q", sig)
				}
				inner := len(sig) - len(rest) + 1
				return sig[:inner], sig[inner:], nil
			}
			_, r, err := nextType(rest)
			if err != nil {
				return "", "", err
			}
			rest = r
			n++
		}
	case 'y', 'b', 'n', 'q', 'i', 'u', 'x', 't', 'd', 's', 'o', 'g', 'h', 'v':
		return sig[:1], sig[1:], nil
	}
	return "", "", fmt.Errorf("busclient: unknown type %q in a signature", sig[0])
}

// values reads one value of each complete type of sig.
func (d *decoder) values(sig string, depth int) ([]any, error) {
	var out []any
	for sig != "" {
		t, rest, err := nextType(sig)
		if err != nil {
			return nil, err
		}
		v, err := d.value(t, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		sig = rest
	}
	return out, nil
}

// value reads one value of the complete type t. Arrays are []any ([]byte
// for ay), dicts map[string]any (their keys must be strings), structs
// []any, variants Variant.
func (d *decoder) value(t string, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("busclient: values nested too deep")
	}
	switch t[0] {
	case 'y':
		p, err := d.take(1)
		if err != nil {
			return nil, err
		}
		return p[0], nil
	case 'b':
		v, err := d.uint32()
		return v != 0, err
	case 'n', 'q':
		p, err := d.fixed(2)
		if err != nil {
			return nil, err
		}
		if t[0] == 'n' {
			return int16(d.order.Uint16(p)), nil
		}
		return d.order.Uint16(p), nil
	case 'i':
		v, err := d.uint32()
		return int32(v), err
	case 'u':
		return d.uint32()
	case 'h':
		i, err := d.uint32()
		if err != nil {
			return nil, err
		}
		if uint64(i) >= uint64(len(d.files)) {
			return nil, fmt.Errorf("busclient: descriptor %d of a message with %d", i, len(d.files))
		}
		return d.files[i], nil
	case 'x', 't', 'd':
		p, err := d.fixed(8)
		if err != nil {
			return nil, err
		}
		v := d.order.Uint64(p)
		switch t[0] {
		case 'x':
			return int64(v), nil
		case 'd':
			return math.Float64frombits(v), nil
		}
		return v, nil
	case 's':
		return d.string()
	case 'o':
		s, err := d.string()
		return ObjectPath(s), err
	case 'g':
		return d.signature()
	case 'v':
		sig, err := d.signature()
		if err != nil {
			return nil, err
		}
		one, rest, err := nextType(sig)
		if err != nil || rest != "" {
			return nil, fmt.Errorf("busclient: variant of signature %q", sig)
		}
		v, err := d.value(one, depth+1)
		return Variant{Sig: sig, Value: v}, err
	case '(':
		if err := d.align(8); err != nil {
			return nil, err
		}
		return d.values(t[1:len(t)-1], depth+1)
	case 'a':
		return d.array(t[1:], depth+1)
	}
	return nil, fmt.Errorf("busclient: cannot read type %q", t)
}

func (d *decoder) array(elem string, depth int) (any, error) {
	n, err := d.uint32()
	if err != nil {
		return nil, err
	}
	if elem[0] == '{' || elem[0] == '(' || elem[0] == 'x' || elem[0] == 't' || elem[0] == 'd' {
		if err := d.align(8); err != nil {
			return nil, err
		}
	}
	body, err := d.take(int(min(n, math.MaxInt32)))
	if err != nil {
		return nil, err
	}
	if elem == "y" {
		return append([]byte{}, body...), nil
	}
	sub := &decoder{b: body, order: d.order, base: d.base + d.i - len(body), files: d.files}
	if elem[0] == '{' {
		kt, vt, _ := nextType(elem[1 : len(elem)-1])
		if kt != "s" && kt != "o" && kt != "g" {
			return nil, fmt.Errorf("busclient: a dict with keys of type %s", kt)
		}
		m := map[string]any{}
		for sub.i < len(sub.b) {
			if err := sub.align(8); err != nil {
				return nil, err
			}
			k, err := sub.value(kt, depth)
			if err != nil {
				return nil, err
			}
			v, err := sub.value(vt, depth)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = v
		}
		return m, nil
	}
	list := []any{}
	for sub.i < len(sub.b) {
		v, err := sub.value(elem, depth)
		if err != nil {
			return nil, err
		}
		list = append(list, v)
	}
	return list, nil
}
