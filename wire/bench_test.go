// SPDX-License-Identifier: Apache-2.0

package wire

import (
	"fmt"
	"testing"
)

// BenchmarkDeviceMessage measures the agent's share of one message of
// `make bench`: decode the message frame and encode its ack, in each
// version. frame-bytes/op is the length of both frames.
func BenchmarkDeviceMessage(b *testing.B) {
	for v := 1; v <= Version; v++ {
		b.Run(fmt.Sprint("version ", v), func(b *testing.B) {
			server, _ := NewCodec(v)
			agent, _ := NewCodec(v)
			first, _ := server.Encode("", benchMessage(0))
			frame, _ := server.Encode("", benchMessage(1))
			agent.Decode(first) // the binding of version 2
			var ackLen int
			b.ReportAllocs()
			for b.Loop() {
				f, err := agent.Decode(frame)
				var m Message
				if err == nil {
					err = f.Decode(&m)
				}
				var ack []byte
				if err == nil {
					ack, err = agent.Encode("", Ack{IDs: []string{m.ID}})
				}
				if err != nil {
					b.Fatal(err)
				}
				ackLen = len(ack)
			}
			b.ReportMetric(float64(len(frame)+ackLen), "frame-bytes/op")
		})
	}
}
