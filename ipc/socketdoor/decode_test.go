// SPDX-License-Identifier: Apache-2.0

package socketdoor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"tether/ipc"
)

func TestDecodeRequest(t *testing.T) {
	ttl := int64(60)
	tests := []struct {
		name     string
		line     string
		want     ipc.Request
		wantCode string
		wantMsg  string // substring of the error message
		wantID   string // the ID the error response can echo
	}{
		{
			name: "send with every field",
			line: `{"id":7,"op":"send","app":"a","to":"s","message_id":"m1","ttl":60,"priority":"high","data":{"k":"v","e":""},"wait":true}`,
			want: ipc.Request{ID: json.RawMessage(`7`), Op: "send", App: "a", To: "s", MessageID: "m1", TTL: &ttl, Priority: "high", Data: map[string]string{"k": "v", "e": ""}, Wait: true},
		},
		{
			name: "ack with object id and unknown field ignored",
			line: ` {"id":{"n":[1]},"op":"ack","app":"a","ids":["x","y"],"future":1} `,
			want: ipc.Request{ID: json.RawMessage(`{"n":[1]}`), Op: "ack", App: "a", IDs: []string{"x", "y"}},
		},
		{
			name: "escaped data value",
			line: `{"op":"send","data":{"k":"a\nb \u00e9"}}`,
			want: ipc.Request{Op: "send", Data: map[string]string{"k": "a\nb é"}},
		},
		{name: "not JSON", line: `{"op":`, wantCode: ipc.CodeBadRequest, wantMsg: "invalid JSON: unexpected end of JSON input"},
		{name: "two objects", line: `{"op":"status"} {"op":"status"}`, wantCode: ipc.CodeBadRequest, wantMsg: "after top-level value"},
		{name: "array", line: `[1]`, wantCode: ipc.CodeBadRequest, wantMsg: "must be a JSON object, not array"},
		{name: "no op", line: `{"id":"x","app":"a"}`, wantCode: ipc.CodeBadRequest, wantMsg: `no "op"`, wantID: `"x"`},
		{name: "number data value", line: `{"id":1,"op":"send","data":{"a":"x","n":5}}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `key "n" is a number`, wantID: `1`},
		{name: "null data value", line: `{"op":"send","data":{"n":null}}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `key "n" is null`},
		{name: "object data value", line: `{"op":"send","data":{"o":{}}}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `key "o" is an object`},
		{name: "first bad key by order", line: `{"op":"send","data":{"z":1,"b":true}}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `key "b" is a boolean`},
		{name: "data not an object", line: `{"op":"send","data":"k=v"}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `field "data" must be an object of string values, not string`},
		{name: "ttl as string", line: `{"id":"t","op":"send","ttl":"60"}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `field "ttl" must be an integer number of seconds, not string`, wantID: `"t"`},
		{name: "fractional ttl", line: `{"op":"send","ttl":1.5}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `field "ttl"`},
		{name: "op as number", line: `{"op":3}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `field "op" must be a string, not number`},
		{name: "ids not strings", line: `{"op":"ack","ids":[1]}`, wantCode: ipc.CodeInvalidArgument, wantMsg: `field "ids" must be an array of strings`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rerr := decodeRequest([]byte(tt.line))
			if tt.wantCode == "" {
				if rerr != nil {
					t.Fatalf("decodeRequest(%s) failed: %v", tt.line, rerr)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("decodeRequest(%s) = %+v, want %+v", tt.line, got, tt.want)
				}
				return
			}
			if rerr == nil {
				t.Fatalf("decodeRequest(%s) = %+v, want error %s", tt.line, got, tt.wantCode)
			}
			if rerr.Code != tt.wantCode || !strings.Contains(rerr.Message, tt.wantMsg) {
				t.Errorf("decodeRequest(%s) error = %v, want code %s with %q", tt.line, rerr, tt.wantCode, tt.wantMsg)
			}
			if string(got.ID) != tt.wantID {
				t.Errorf("decodeRequest(%s) kept id %s, want %s", tt.line, got.ID, tt.wantID)
			}
		})
	}
}

func TestBackendError(t *testing.T) {
	tests := []struct {
		err  error
		code string
	}{
		{ipc.ErrPermission, ipc.CodePermissionDenied},
		{ipc.ErrUnknownApp, ipc.CodeUnknownApp},
		{ipc.ErrNotRegistered, ipc.CodeNotRegistered},
		{ipc.ErrTooManyMessages, ipc.CodeTooManyMessages},
		{ipc.ErrTooManyRegistrations, ipc.CodeTooManyRegistrations},
		{ipc.ErrInvalidArgument, ipc.CodeInvalidArgument},
		{ipc.ErrOffline, ipc.CodeOffline},
		{ipc.ErrRefused, ipc.CodeRefused},
		{ipc.ErrStorage, ipc.CodeStorageUnavailable},
		{errors.New("disk on fire"), ipc.CodeInternal},
	}
	for _, tt := range tests {
		err := fmt.Errorf("register app %q: %w", "com.example", tt.err)
		got := backendError(err)
		if got.Code != tt.code || got.Message != err.Error() {
			t.Errorf("backendError(%v) = %+v, want code %s and the error's text", err, got, tt.code)
		}
	}
}

func TestReadLine(t *testing.T) {
	const max = 8
	tests := []struct {
		name  string
		input string
		want  []string // lines, then "EOF" or "TOO LONG"
	}{
		{"lines", "ab\ncd\n", []string{"ab", "cd", "EOF"}},
		{"last line without newline", "ab\ncd", []string{"ab", "cd+EOF"}},
		{"exactly max", "12345678\nx\n", []string{"12345678", "x", "EOF"}},
		{"one over max", "123456789\n", []string{"TOO LONG"}},
		{"over max without newline", "123456789", []string{"TOO LONG"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The smallest buffer bufio allows, so that long lines come
			// in several chunks.
			r := bufio.NewReaderSize(strings.NewReader(tt.input), 16)
			var got []string
			for {
				line, err := readLine(r, max)
				switch {
				case errors.Is(err, errLineTooLong):
					got = append(got, "TOO LONG")
				case err != nil && len(line) > 0:
					got = append(got, string(line)+"+EOF")
				case err != nil:
					got = append(got, "EOF")
				default:
					got = append(got, string(line))
					continue
				}
				break
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("read %q as %q, want %q", tt.input, got, tt.want)
			}
		})
	}
}

// FuzzDecodeRequest checks that no line makes the decoder panic, that every
// failure carries a code and a readable message, and that what it accepts
// survives a round trip through the encoder a client would use.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"op":"status"}`,
		`{"id":1,"op":"register","app":"com.example","sender":"123"}`,
		`{"id":"x","op":"send","app":"a","to":"s","ttl":0,"priority":"high","data":{"k":"v"},"wait":true}`,
		`{"op":"ack","app":"a","ids":["0:1%ab","0:2%ab"]}`,
		`{"op":"send","data":{"k":1}}`,
		`{"op":"send","ttl":"1"}`,
		`{"op":`,
		`[]`,
		`null`,
		`{"op":"listen","app":"\ud800"}`,
		`{"id":null,"op":"x","data":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, rerr := decodeRequest(line)
		if rerr != nil {
			if rerr.Code == "" || rerr.Message == "" || !utf8.ValidString(rerr.Message) {
				t.Fatalf("decodeRequest(%q) failed without a usable error: %+v", line, rerr)
			}
			if len(req.ID) > 0 && !json.Valid(req.ID) {
				t.Fatalf("decodeRequest(%q) kept an invalid id %q", line, req.ID)
			}
			return
		}
		if req.Op == "" {
			t.Fatalf("decodeRequest(%q) accepted a request without op", line)
		}
		encoded, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("encode %+v: %v", req, err)
		}
		again, rerr := decodeRequest(encoded)
		if rerr != nil {
			t.Fatalf("decodeRequest(%s) (re-encoded from %q) failed: %v", encoded, line, rerr)
		}
		// The ID comes back as the app sent it, give or take whitespace.
		var compact bytes.Buffer
		if len(req.ID) > 0 {
			if err := json.Compact(&compact, req.ID); err != nil {
				t.Fatalf("decodeRequest(%q) kept an invalid id %q: %v", line, req.ID, err)
			}
		}
		if !bytes.Equal(again.ID, compact.Bytes()) {
			t.Fatalf("round trip of %q changed the id from %s to %s", line, req.ID, again.ID)
		}
		again.ID, req.ID = nil, nil
		if !reflect.DeepEqual(normalize(again), normalize(req)) {
			t.Fatalf("round trip of %q changed the request:\n got %+v\nwant %+v", line, again, req)
		}
	})
}

// normalize treats empty and nil collections alike: the encoder omits both.
func normalize(r ipc.Request) ipc.Request {
	if len(r.Data) == 0 {
		r.Data = nil
	}
	if len(r.IDs) == 0 {
		r.IDs = nil
	}
	return r
}
