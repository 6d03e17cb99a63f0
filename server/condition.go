// SPDX-License-Identifier: Apache-2.0

package server

import (
	"fmt"
	"slices"
	"strings"

	"tether/wire"
)

// GCM's limits on a condition.
const (
	maxConditionTopics = 5
	// maxConditionLen and maxConditionDepth bound the parser's work; five
	// topic names and their operators fit many times over.
	maxConditionLen   = 8 << 10
	maxConditionDepth = 16
)

// condition is a parsed topic condition such as
// "'weather' in topics && ('news' in topics || 'sport' in topics)".
type condition struct {
	root *condNode
	// topics are the distinct topic names in the order they appear.
	topics []string
}

type condNode struct {
	op          byte // '&', '|', or 't' for "'topic' in topics"
	topic       string
	left, right *condNode
}

// eval reports whether a registration with the subscriptions reported by
// subscribed satisfies the condition.
func (c *condition) eval(subscribed func(topic string) bool) bool { return c.root.eval(subscribed) }

func (n *condNode) eval(subscribed func(string) bool) bool {
	switch n.op {
	case '&':
		return n.left.eval(subscribed) && n.right.eval(subscribed)
	case '|':
		return n.left.eval(subscribed) || n.right.eval(subscribed)
	}
	return subscribed(n.topic)
}

// parseCondition parses GCM's condition syntax: 'NAME' in topics (single
// or double quotes), &&, || (&& binds tighter) and parentheses, with at
// most five distinct topics.
func parseCondition(s string) (*condition, error) {
	if len(s) > maxConditionLen {
		return nil, fmt.Errorf("condition is %d bytes, at most %d are allowed", len(s), maxConditionLen)
	}
	p := condParser{src: s}
	root, err := p.or(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos < len(p.src) {
		return nil, p.errorf("unexpected %.20q", p.src[p.pos:])
	}
	if len(p.topics) > maxConditionTopics {
		return nil, fmt.Errorf("condition names %d topics, at most %d are allowed", len(p.topics), maxConditionTopics)
	}
	return &condition{root: root, topics: p.topics}, nil
}

type condParser struct {
	src    string
	pos    int
	topics []string
}

func (p *condParser) errorf(format string, args ...any) error {
	return fmt.Errorf("condition at byte %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *condParser) space() {
	for p.pos < len(p.src) && strings.IndexByte(" \t\r\n", p.src[p.pos]) >= 0 {
		p.pos++
	}
}

// eat consumes tok if it comes next.
func (p *condParser) eat(tok string) bool {
	p.space()
	if strings.HasPrefix(p.src[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *condParser) or(depth int) (*condNode, error) {
	left, err := p.and(depth)
	for err == nil && p.eat("||") {
		var right *condNode
		if right, err = p.and(depth); err == nil {
			left = &condNode{op: '|', left: left, right: right}
		}
	}
	return left, err
}

func (p *condParser) and(depth int) (*condNode, error) {
	left, err := p.term(depth)
	for err == nil && p.eat("&&") {
		var right *condNode
		if right, err = p.term(depth); err == nil {
			left = &condNode{op: '&', left: left, right: right}
		}
	}
	return left, err
}

func (p *condParser) term(depth int) (*condNode, error) {
	if p.eat("(") {
		if depth >= maxConditionDepth {
			return nil, p.errorf("parentheses nested more than %d deep", maxConditionDepth)
		}
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if !p.eat(")") {
			return nil, p.errorf("missing )")
		}
		return n, nil
	}
	p.space()
	if p.pos >= len(p.src) {
		return nil, p.errorf("expected 'TOPIC' in topics, found the end")
	}
	quote := p.src[p.pos]
	if quote != '\'' && quote != '"' {
		return nil, p.errorf("expected 'TOPIC' in topics, found %.20q", p.src[p.pos:])
	}
	end := strings.IndexByte(p.src[p.pos+1:], quote)
	if end < 0 {
		return nil, p.errorf("unterminated topic name")
	}
	topic := p.src[p.pos+1 : p.pos+1+end]
	if !wire.ValidTopic(topic) {
		return nil, p.errorf("%.40q is not a topic name (1 to %d characters of [a-zA-Z0-9-_.~%%])", topic, wire.MaxTopicLen)
	}
	p.pos += end + 2
	if !p.eat("in") || !p.word() || !p.eat("topics") || !p.word() {
		return nil, p.errorf("expected in topics after '%s'", topic)
	}
	if !slices.Contains(p.topics, topic) {
		p.topics = append(p.topics, topic)
	}
	return &condNode{op: 't', topic: topic}, nil
}

// word reports whether the keyword just eaten ends there (so that
// "intopics" or "topicsX" is refused).
func (p *condParser) word() bool {
	if p.pos >= len(p.src) {
		return true
	}
	c := p.src[p.pos]
	return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_')
}
