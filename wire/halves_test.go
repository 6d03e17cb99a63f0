// SPDX-License-Identifier: Apache-2.0

package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// decoded is what the receiving end made of one WebSocket message.
type decoded struct {
	frame Frame
	err   error
}

// FuzzDecodeInTwoHalves sends arbitrary bytes as one WebSocket message
// over a real loopback connection, written in two parts split at an
// arbitrary place (inside the WebSocket header, the mask or the payload),
// as a slow network delivers them, and decodes what arrives the way both
// ends of a session do. The result must be what decoding the bytes whole
// gives, and the connection must stay usable.
func FuzzDecodeInTwoHalves(f *testing.F) {
	for _, s := range []string{
		`{"type":"hello","body":{"version":1,"heartbeat":240}}`,
		`{"type":"message","body":{"id":"0:1%a","token":"t","app":"a","from":"1","data":{"k":"v"},"ttl":10}}`,
		`{"type":"ack","body":{"ids":["a","b"]}}`,
		`{"type":"upstream","ref":"x","body":{"app":"a","to":"1","id":"x","ttl":0}}`,
		`not json`,
		``,
	} {
		f.Add([]byte(s), uint16(len(s)/2))
		f.Add([]byte(s), uint16(1))
	}
	got := make(chan decoded)
	upgrader := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetReadLimit(MaxFrameSize)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			fr, err := Decode(data)
			got <- decoded{fr, err}
		}
	}))
	defer srv.Close()
	raw := dialRaw(f, srv.Listener.Addr().String())
	defer raw.Close()

	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		if len(data) > MaxFrameSize {
			t.Skip("over the frame limit: the reader closes the connection, as it must")
		}
		wantFrame, wantErr := Decode(data)
		msg := clientMessage(data)
		k := int(cut) % (len(msg) + 1)
		raw.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := raw.Write(msg[:k]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Microsecond) // let the first part be read on its own
		if _, err := raw.Write(msg[k:]); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-got:
			if (d.err == nil) != (wantErr == nil) || (d.err != nil && d.err.Error() != wantErr.Error()) || !reflect.DeepEqual(d.frame, wantFrame) {
				t.Fatalf("split at %d of %d: decoded %+v, %v; whole it decodes to %+v, %v", k, len(msg), d.frame, d.err, wantFrame, wantErr)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("split at %d of %d: nothing decoded", k, len(msg))
		}
	})
}

// dialRaw opens a WebSocket connection by hand, so that the test can
// write the bytes of its messages itself.
func dialRaw(tb testing.TB, addr string) net.Conn {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	fmt.Fprintf(raw, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	in := bufio.NewReader(raw)
	resp, err := http.ReadResponse(in, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		tb.Fatalf("upgrade: %v %v", resp, err)
	}
	return raw // the server sends nothing more
}

// clientMessage frames payload as one binary WebSocket message from a
// client, masked as clients must.
func clientMessage(payload []byte) []byte {
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	b := []byte{0x82}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}
