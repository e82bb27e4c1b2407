package mqtt

import (
	"errors"
	"fmt"
)

// ErrPublishRefused reports a publish the broker refused with an MQTT 5
// reason code (PUBACK or PUBREC of 0x80 or more). errors.As with a
// *RefusedError gives the code.
var ErrPublishRefused = errors.New("publish refused by the broker")

// reasonNames are the MQTT 5 reason codes of 0x80 and more (MQTT 5.0
// section 2.4), by name.
var reasonNames = map[byte]string{
	0x80: "Unspecified error",
	0x81: "Malformed Packet",
	0x82: "Protocol Error",
	0x83: "Implementation specific error",
	0x84: "Unsupported Protocol Version",
	0x85: "Client Identifier not valid",
	0x86: "Bad User Name or Password",
	0x87: "Not authorized",
	0x88: "Server unavailable",
	0x89: "Server busy",
	0x8A: "Banned",
	0x8B: "Server shutting down",
	0x8C: "Bad authentication method",
	0x8D: "Keep Alive timeout",
	0x8E: "Session taken over",
	0x8F: "Topic Filter invalid",
	0x90: "Topic Name invalid",
	0x91: "Packet Identifier in use",
	0x92: "Packet Identifier not found",
	0x93: "Receive Maximum exceeded",
	0x94: "Topic Alias invalid",
	0x95: "Packet too large",
	0x96: "Message rate too high",
	0x97: "Quota exceeded",
	0x98: "Administrative action",
	0x99: "Payload format invalid",
	0x9A: "Retain not supported",
	0x9B: "QoS not supported",
	0x9C: "Use another server",
	0x9D: "Server moved",
	0x9E: "Shared Subscriptions not supported",
	0x9F: "Connection rate exceeded",
	0xA0: "Maximum connect time",
	0xA1: "Subscription Identifiers not supported",
	0xA2: "Wildcard Subscriptions not supported",
}

// transientReasons are the refusals that say "not now": the broker is
// busy, over a quota or a rate, or going away, so the same publish may be
// accepted later. Every other refusal, 0x80 Unspecified error and 0x83
// Implementation specific error included, is permanent: the broker gave
// no ground to expect a retry to succeed (mosquitto 2 answers 0x83 to a
// message over its message_size_limit, 0x87 to one its ACL denies), and
// retrying it would hold the flow back forever.
var transientReasons = map[byte]bool{
	0x88: true, // Server unavailable
	0x89: true, // Server busy
	0x8B: true, // Server shutting down
	0x91: true, // Packet Identifier in use: the next attempt takes another
	0x93: true, // Receive Maximum exceeded
	0x96: true, // Message rate too high
	0x97: true, // Quota exceeded
	0x9F: true, // Connection rate exceeded
}

// ReasonName returns the MQTT 5 name of reason code code ("Quota
// exceeded"), or "unknown reason code" for a code MQTT 5 does not define.
func ReasonName(code byte) string {
	if n, ok := reasonNames[code]; ok {
		return n
	}
	if code < 0x80 {
		return "Success"
	}
	return "unknown reason code"
}

// RefusedError is a publish refused by the broker: its reason code, and
// the reason string the broker gave, if any. It matches
// ErrPublishRefused.
type RefusedError struct {
	// Code is the reason code of the PUBACK or PUBREC, 0x80 or more.
	Code byte
	// Reason is the broker's Reason String property ("" when none).
	Reason string
}

// Transient reports whether the refusal may not recur: the broker is busy
// or over a quota or rate (see transientReasons). A transient refusal is
// retried; any other fails the publish at once.
func (e *RefusedError) Transient() bool { return transientReasons[e.Code] }

// Error implements error: "publish refused by the broker: reason code
// 0x97 Quota exceeded (transient): REASON".
func (e *RefusedError) Error() string {
	kind := "permanent"
	if e.Transient() {
		kind = "transient"
	}
	s := fmt.Sprintf("%v: reason code %#02x %s (%s)", ErrPublishRefused, e.Code, ReasonName(e.Code), kind)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Unwrap makes a RefusedError match ErrPublishRefused.
func (e *RefusedError) Unwrap() error { return ErrPublishRefused }
