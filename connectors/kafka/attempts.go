package kafka

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/flowrun/flowrun/internal/flock"
)

// attempts is a source's durable attempt record (SourceOptions.AttemptsDir):
// for each partition, its lowest unfinished offset (mark) and how many
// times a process of the group began handling the record there while the
// mark stayed. Kafka keeps no delivery count, so without it a record that
// kills the process (a panic, an out-of-memory kill) is read again on
// every restart; with it, the record is dead-lettered unprocessed once its
// handling has begun max times. It is used by the poll loop only.
type attempts struct {
	path  string
	max   int
	parts map[int32]attempt
}

// attempt is one partition's entry.
type attempt struct {
	Mark   int64 `json:"mark"`
	Starts int   `json:"starts"`
	// Aside are the offsets set aside and not yet known to be committed
	// past: a restart that reads one again (the commit had not happened)
	// sets it aside again instead of processing it.
	Aside []int64 `json:"aside,omitempty"`
}

// ErrAttemptsInUse: the attempt record of a group and topic is in use by
// another source, in this process or another.
var ErrAttemptsInUse = errors.New("attempt record in use")

// lockAttempts creates dir and takes the lock of the attempt record at
// path: a file beside it (path + ".lock"; the record itself is replaced
// at each write) flocked for as long as it stays open. Two sources of one
// group and topic writing one record would each replace it with their
// own partitions' entries, so the second is refused. On a file system
// without flock the record is used unlocked.
func lockAttempts(dir, path string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("attempts_dir: %w", err)
	}
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("attempts_dir: %w", err)
	}
	held, _, err := flock.TryLock(f)
	if err == nil && held {
		err = fmt.Errorf("%w: %s is locked by another source of its group and topic: give each process its own attempts_dir", ErrAttemptsInUse, path)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("attempts_dir: %w", err)
	}
	return f, nil
}

// attemptsFile is the file of group and topic in dir.
func attemptsFile(dir, group, topic string) string {
	return filepath.Join(dir, url.PathEscape(group)+"."+url.PathEscape(topic)+".attempts")
}

// loadAttempts reads the record at path (none yet: an empty one).
func loadAttempts(path string, max int) (*attempts, error) {
	a := &attempts{path: path, max: max, parts: map[int32]attempt{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("attempts_dir: %w", err)
	}
	var byName map[string]attempt
	if err := json.Unmarshal(b, &byName); err != nil {
		return nil, fmt.Errorf("attempts_dir: %s: %w", path, err)
	}
	for k, v := range byName {
		id, err := strconv.ParseInt(k, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("attempts_dir: %s: partition %q: %w", path, k, err)
		}
		a.parts[int32(id)] = v
	}
	return a, nil
}

// save writes the record atomically: a temporary file synced, renamed
// over the old one, and the directory synced.
func (a *attempts) save() error {
	byName := make(map[string]attempt, len(a.parts))
	for id, v := range a.parts {
		byName[strconv.FormatInt(int64(id), 10)] = v
	}
	b, err := json.Marshal(byName)
	if err != nil {
		return err
	}
	dir := filepath.Dir(a.path)
	f, err := os.CreateTemp(dir, filepath.Base(a.path)+".*")
	if err != nil {
		return fmt.Errorf("attempts_dir: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), a.path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("attempts_dir: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("attempts_dir: %w", err)
	}
	err = d.Sync()
	_ = d.Close()
	return err
}

// check updates the record for a batch about to be handed over and marks
// the deliveries to set aside: ds are the batch's deliveries, marks the
// lowest unfinished offset of each partition in it (its records
// registered). It is called with the consumer's lock held
// (consumer.began), before any record of ds reaches the graph, and writes
// the file when an entry changed. A delivery at a partition's recorded mark, handed over for the
// first time in this assignment (partition.counted), counts one more
// start; at max starts already it gets crashStarts set instead, and the
// source dead-letters it without emitting it.
func (a *attempts) check(ds []delivery, marks map[*partition]int64) error {
	changed := false
	for i := range ds {
		d := &ds[i]
		p := d.part
		rec, ok := a.parts[p.id]
		if !ok {
			continue
		}
		if slices.Contains(rec.Aside, d.rec.Offset) {
			d.crashStarts = max(rec.Starts, a.max)
			continue
		}
		if p.counted || rec.Mark != d.rec.Offset {
			continue
		}
		p.counted = true
		if rec.Starts >= a.max {
			d.crashStarts = rec.Starts
			rec.Aside = append(rec.Aside, rec.Mark)
		} else {
			rec.Starts++
		}
		a.parts[p.id] = rec
		changed = true
	}
	for p, mark := range marks {
		changed = a.move(p, mark, true) || changed
	}
	if !changed {
		return nil
	}
	return a.save()
}

// advance records the marks that moved past their recorded ones since the
// last write, so that a record finished is not counted again when a
// restart reads it again: parts are the assigned partitions, under the
// consumer's lock. A mark whose record has not begun reaching the graph
// (all done: the next offset; or fetched and waiting) has 0 starts.
func (a *attempts) advance(parts map[int32]*partition) error {
	changed := false
	for _, p := range parts {
		mark, handed := p.mark, false
		if p.head < len(p.pending) {
			mark = p.pending[p.head].offset
			handed = mark <= p.begun // fetched and waiting does not count
		}
		if mark >= 0 {
			changed = a.move(p, mark, handed) || changed
		}
	}
	if !changed {
		return nil
	}
	return a.save()
}

// move records p's lowest unfinished offset mark (handed: its record has
// been handed over in this assignment) when it is past the recorded one,
// with 0 or 1 start, and forgets the offsets set aside that p's commits
// have passed. It reports whether the entry changed.
func (a *attempts) move(p *partition, mark int64, handed bool) bool {
	rec, ok := a.parts[p.id]
	changed := false
	if ok && len(rec.Aside) > 0 && p.committed >= 0 {
		kept := rec.Aside[:0:0]
		for _, o := range rec.Aside {
			if o >= p.committed {
				kept = append(kept, o)
			}
		}
		changed = len(kept) != len(rec.Aside)
		rec.Aside = kept
	}
	if ok && rec.Mark >= mark {
		// Not past the recorded mark: the records before it are being
		// read again (a restart resumes at the last commit).
		if changed {
			a.parts[p.id] = rec
		}
		return changed
	}
	starts := 0
	if handed {
		starts = 1
	}
	a.parts[p.id] = attempt{Mark: mark, Starts: starts, Aside: rec.Aside}
	p.counted = handed
	return true
}
