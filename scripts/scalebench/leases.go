package main

import (
	"strconv"
	"strings"
)

// Ownership counts what a run's flowrun instances logged of their
// partitions' ownership (connectors/kv/partitioned's runtime log lines):
// every take-over of a partition, planned or not, appends the fence
// messages of a new epoch to its changelog, so a run without lease
// trouble serves each partition about once per instance that held it.
type Ownership struct {
	// Serves counts "serving a partition": take-overs finished (the
	// first of each partition included).
	Serves int `json:"serves"`
	// Stops counts "partition stopped": an owner that ended with an
	// error while its instance was running, LeaseLost of them because
	// its lease was lost (ErrLost: its deadline passed without a
	// renewal, or another holder changed it).
	Stops     int `json:"stops"`
	LeaseLost int `json:"lease_lost"`
	// Overdue counts take-overs that outlived their lease and were
	// started again.
	Overdue int `json:"overdue"`
	// GiveBacks counts partitions handed to another instance by the
	// balancing (a planned move).
	GiveBacks int `json:"give_backs"`
	// MaxEpoch is the largest epoch a partition was served at (the
	// lease stream's sequence at its acquisition).
	MaxEpoch uint64 `json:"max_epoch"`
}

// add adds what one instance's log says.
func (o *Ownership) add(log string) {
	for line := range strings.Lines(log) {
		switch {
		case strings.Contains(line, "partitioned: serving a partition"):
			o.Serves++
			if e, ok := logField(line, "epoch"); ok {
				if n, err := strconv.ParseUint(e, 10, 64); err == nil && n > o.MaxEpoch {
					o.MaxEpoch = n
				}
			}
		case strings.Contains(line, "partitioned: partition stopped"):
			o.Stops++
			if strings.Contains(line, "lease lost") {
				o.LeaseLost++
			}
		case strings.Contains(line, "outlived its lease"):
			o.Overdue++
		case strings.Contains(line, "partitioned: giving a partition back"):
			o.GiveBacks++
		}
	}
}

// logField returns the value of key=value in a slog text line.
func logField(line, key string) (string, bool) {
	for f := range strings.FieldsSeq(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v, true
		}
	}
	return "", false
}
