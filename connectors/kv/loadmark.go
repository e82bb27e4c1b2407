package kv

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrIncompleteDump reports a dump whose last line is the marker Dump's
// writers append when a dump stops early (IncompleteDumpLine): the lines
// before it are not the whole store.
var ErrIncompleteDump = errors.New("dump is incomplete")

// IncompleteDumpField is the only field of the line that ends a dump cut
// short by an error: {"dump_incomplete":"<why>"}. ParseRecord refuses the
// line with ErrIncompleteDump.
const IncompleteDumpField = "dump_incomplete"

// IncompleteDumpLine returns the line (with its newline) that marks a dump
// cut short by err.
func IncompleteDumpLine(err error) []byte {
	b, _ := json.Marshal(map[string]string{IncompleteDumpField: err.Error()})
	return append(b, '\n')
}

// Partial load markers. Load records that it started under a key of its
// own outside every namespace, and deletes it when every record is
// committed: a marker still present names a load that stopped half way
// (killed, or failed), so the store holds only part of its input.
//
//	load marker: 'l' be64(start, Unix nanoseconds) -> JSON {"source","started"}
const tagLoad byte = 'l'

// PartialLoad describes a load that started and never completed.
type PartialLoad struct {
	// Source names the load's input ("stdin" or a file path).
	Source string `json:"source"`
	// Started is when the load began.
	Started time.Time `json:"started"`

	key []byte
}

func (p PartialLoad) String() string {
	return fmt.Sprintf("a load of %s started %s did not complete", p.Source, p.Started.Format(time.RFC3339))
}

func loadMarkerKey(start time.Time) []byte {
	return binary.BigEndian.AppendUint64([]byte{tagLoad}, uint64(start.UnixNano()))
}

// PartialLoads returns the loads of b that started and did not complete,
// oldest first.
func PartialLoads(ctx context.Context, b Backend) ([]PartialLoad, error) {
	var out []PartialLoad
	read := func(tx Txn) error {
		out = out[:0]
		return tx.Scan([]byte{tagLoad}, []byte{tagLoad + 1}, func(k, v []byte, _ int64) (bool, error) {
			var p PartialLoad
			if err := json.Unmarshal(v, &p); err != nil {
				p.Source = fmt.Sprintf("(unreadable marker %q)", v)
			}
			p.key = append([]byte(nil), k...)
			out = append(out, p)
			return true, nil
		})
	}
	errs := make([]error, 1)
	var err error
	if v, ok := b.(Viewer); ok {
		err = v.View(ctx, []TxnFunc{read}, errs)
	} else {
		err = b.Update(ctx, []TxnFunc{read}, errs)
	}
	if err = errors.Join(err, errs[0]); err != nil {
		return nil, fmt.Errorf("read partial load markers: %w", err)
	}
	return out, nil
}

// ForgetPartialLoads deletes the markers of loads, as returned by
// PartialLoads: the store is then no longer reported as partially loaded.
func ForgetPartialLoads(ctx context.Context, b Backend, loads []PartialLoad) error {
	if len(loads) == 0 {
		return nil
	}
	del := func(tx Txn) error {
		for _, p := range loads {
			if err := tx.Delete(p.key); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make([]error, 1)
	if err := errors.Join(b.Update(ctx, []TxnFunc{del}, errs), errs[0]); err != nil {
		return fmt.Errorf("delete partial load markers: %w", err)
	}
	return nil
}

// startLoad writes the marker of a load of source starting now.
func startLoad(ctx context.Context, b Backend, source string, now time.Time) ([]byte, error) {
	key := loadMarkerKey(now)
	val, err := json.Marshal(PartialLoad{Source: source, Started: now.UTC()})
	if err != nil {
		return nil, err
	}
	errs := make([]error, 1)
	set := func(tx Txn) error { return tx.Set(key, val, 0) }
	if err := errors.Join(b.Update(ctx, []TxnFunc{set}, errs), errs[0]); err != nil {
		return nil, fmt.Errorf("load: mark the load as started: %w", err)
	}
	return key, nil
}

// finishLoad deletes the marker of the completed load (key), and those of
// earlier loads of the same source, which the completed load has
// overwritten.
func finishLoad(ctx context.Context, b Backend, key []byte, source string) error {
	loads, err := PartialLoads(ctx, b)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	var done []PartialLoad
	for _, p := range loads {
		if p.Source == source || string(p.key) == string(key) {
			done = append(done, p)
		}
	}
	if err := ForgetPartialLoads(ctx, b, done); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	return nil
}
