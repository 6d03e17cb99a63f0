// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/wire"
)

func TestParseCondition(t *testing.T) {
	subs := func(topics ...string) func(string) bool {
		return func(t string) bool { return slices.Contains(topics, t) }
	}
	tests := []struct {
		cond   string
		topics []string
		true_  [][]string // subscription sets that satisfy it
		false_ [][]string // and sets that do not
	}{
		{"'a' in topics", []string{"a"}, [][]string{{"a"}, {"a", "b"}}, [][]string{{}, {"b"}}},
		{`"a" in topics`, []string{"a"}, [][]string{{"a"}}, [][]string{{"b"}}},
		{"'a' in topics && 'b' in topics", []string{"a", "b"}, [][]string{{"a", "b"}}, [][]string{{"a"}, {"b"}}},
		{"'a' in topics || 'b' in topics", []string{"a", "b"}, [][]string{{"a"}, {"b"}}, [][]string{{"c"}}},
		{"'a' in topics && ('b' in topics || 'c' in topics)", []string{"a", "b", "c"}, [][]string{{"a", "c"}}, [][]string{{"b", "c"}, {"a"}}},
		{"'a' in topics && 'b' in topics || 'c' in topics", []string{"a", "b", "c"}, [][]string{{"c"}, {"a", "b"}}, [][]string{{"a"}}},
		{"  ( ( 'a'   in   topics ) )  ", []string{"a"}, [][]string{{"a"}}, [][]string{{}}},
		{"'a' in topics||'a' in topics", []string{"a"}, [][]string{{"a"}}, [][]string{{}}},
		{"'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'a' in topics",
			[]string{"a", "b", "c", "d", "e"}, [][]string{{"e"}}, [][]string{{"f"}}},
	}
	for _, tt := range tests {
		c, err := parseCondition(tt.cond)
		if err != nil {
			t.Errorf("parse %q: %v", tt.cond, err)
			continue
		}
		if !slices.Equal(c.topics, tt.topics) {
			t.Errorf("%q names %v, want %v", tt.cond, c.topics, tt.topics)
		}
		for _, s := range tt.true_ {
			if !c.eval(subs(s...)) {
				t.Errorf("%q is false for %v", tt.cond, s)
			}
		}
		for _, s := range tt.false_ {
			if c.eval(subs(s...)) {
				t.Errorf("%q is true for %v", tt.cond, s)
			}
		}
	}

	for _, tt := range []struct{ cond, want string }{
		{"", "found the end"},
		{"a in topics", "expected 'TOPIC' in topics"},
		{"'a' in topic", "expected in topics"},
		{"'a' intopics", "expected in topics"},
		{"'a' in topicsx", "expected in topics"},
		{"'a in topics", "unterminated"},
		{"'a b' in topics", "not a topic name"},
		{"'' in topics", "not a topic name"},
		{"'a' in topics &&", "found the end"},
		{"'a' in topics & 'b' in topics", "unexpected"},
		{"('a' in topics", "missing )"},
		{"'a' in topics)", "unexpected"},
		{"!('a' in topics)", "expected 'TOPIC'"},
		{strings.Repeat("(", 17) + "'a' in topics" + strings.Repeat(")", 17), "nested"},
		{"'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics", "6 topics"},
		{strings.Repeat(" ", maxConditionLen+1), "bytes"},
	} {
		if _, err := parseCondition(tt.cond); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parse %.40q: %v, want an error with %q", tt.cond, err, tt.want)
		}
	}
}

func FuzzParseCondition(f *testing.F) {
	for _, s := range []string{"'a' in topics", "'a' in topics && ('b' in topics || \"c\" in topics)", "((", "'a' in", "'x' in topics||'y' in topics&&'z' in topics"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCondition(s)
		if err != nil {
			return
		}
		if len(c.topics) == 0 || len(c.topics) > maxConditionTopics {
			t.Fatalf("%q parsed with %d topics", s, len(c.topics))
		}
		for _, topic := range c.topics {
			if !wire.ValidTopic(topic) {
				t.Fatalf("%q parsed with topic %q", s, topic)
			}
		}
		// Subscribed to everything it names, only an expression with no
		// negation can be true; subscribed to nothing, it is false.
		if !c.eval(func(string) bool { return true }) || c.eval(func(string) bool { return false }) {
			t.Fatalf("%q evaluates wrongly at the extremes", s)
		}
	})
}

func TestRateLimiter(t *testing.T) {
	clock := &testClock{}
	l := newRateLimiter(60, clock.Now)
	for i := range 60 {
		if !l.allow(context.Background(), "a") {
			t.Fatalf("event %d of a burst of 60 refused", i)
		}
	}
	if l.allow(context.Background(), "a") {
		t.Fatal("61st event in a minute allowed")
	}
	if !l.allow(context.Background(), "b") {
		t.Fatal("another key refused")
	}
	clock.Advance(time.Second)
	if !l.allow(context.Background(), "a") || l.allow(context.Background(), "a") {
		t.Fatal("a second should give exactly one more event")
	}
	if newRateLimiter(0, clock.Now) != nil || !(*rateLimiter)(nil).allow(context.Background(), "x") {
		t.Fatal("no limit must allow everything")
	}

	// Idle keys are forgotten once the map has grown.
	for i := range 2 * minPrune {
		l.allow(context.Background(), string(rune(i)))
	}
	clock.Advance(2 * time.Minute)
	l.allow(context.Background(), "new")
	l.mu.Lock()
	n := len(l.buckets)
	l.mu.Unlock()
	if n > minPrune {
		t.Errorf("%d buckets kept after every key went idle", n)
	}
}
