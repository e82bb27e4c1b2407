package incrflow

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/bus"
)

// Witness watches, over plain NATS subscriptions beside the flow, every
// answer published to the answers subject and every acknowledgement
// JetStream sends back for one. For an answer missing from the answers
// stream it tells which side lost it: never published (the flow settled
// its input without an answer), published but never acknowledged as
// stored (the flow settled its input without its answer stored), or
// acknowledged at a sequence that the stream now holds for another answer
// or not at all (the stream lost what it had acknowledged).
//
// A publish carries its reply inbox; the acknowledgement is a message to
// that inbox, which a subscriber of `_INBOX.>` sees too. The two are
// joined by inbox when asked (Explain), since they arrive on different
// subjects in no set order. The Witness keeps one connection per server
// of the cluster, so that one node's loss does not blind it.
type Witness struct {
	stream string
	conns  []*nats.Conn

	mu        sync.Mutex
	published map[string]int   // reply inbox → correlation
	acks      map[string]ackOf // reply inbox → acknowledgement
	// pubSeen and ackSeen say when each publish and acknowledgement
	// was first seen, and through which connections.
	pubSeen, ackSeen map[string]sighting
}

// sighting is when a message was first seen, and the connections (bit i:
// the server at urls[i]) it was seen through.
type sighting struct {
	at  time.Time
	via uint8
}

// see records a sighting of key through connection i.
func see(m map[string]sighting, key string, i int) {
	s, ok := m[key]
	if !ok {
		s.at = time.Now()
	}
	s.via |= 1 << (i % 8)
	m[key] = s
}

// String renders s as its time and its connections.
func (s sighting) String() string {
	return fmt.Sprintf("%s via %03b", s.at.UTC().Format("15:04:05.000"), s.via)
}

// ackOf is an acknowledgement JetStream sent to a publish's inbox:
// stored at Seq (Duplicate: an earlier publish of the same message ID
// was), or refused with Err.
type ackOf struct {
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
	Error     *struct {
		Description string `json:"description"`
	} `json:"error"`
}

// Watch starts a Witness of the answers published to subject out, with a
// connection to each server of urls (comma-separated).
func Watch(urls, out string) (*Witness, error) {
	w := &Witness{stream: bus.StreamName(out), published: map[string]int{}, acks: map[string]ackOf{},
		pubSeen: map[string]sighting{}, ackSeen: map[string]sighting{}}
	streamField := []byte(`"stream":` + strconv.Quote(w.stream))
	for i, u := range strings.Split(urls, ",") {
		nc, err := nats.Connect(u, nats.Timeout(2*time.Second), nats.MaxReconnects(-1))
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("witness: connect to %s: %w", u, err)
		}
		w.conns = append(w.conns, nc)
		subs := []struct {
			subject string
			handle  nats.MsgHandler
		}{
			{out, func(m *nats.Msg) {
				corr, err := strconv.Atoi(m.Header.Get(bus.CorrelationKey))
				if err != nil || m.Reply == "" {
					return
				}
				w.mu.Lock()
				w.published[m.Reply] = corr
				see(w.pubSeen, m.Reply, i)
				w.mu.Unlock()
			}},
			{"_INBOX.>", func(m *nats.Msg) {
				// Acknowledgements of the answers stream, and refusals
				// (which name no stream: kept, they are few; those of
				// other publishes never match an answer's inbox).
				if !bytes.Contains(m.Data, streamField) && !bytes.HasPrefix(m.Data, []byte(`{"error"`)) {
					return
				}
				var a ackOf
				if json.Unmarshal(m.Data, &a) != nil {
					return
				}
				w.mu.Lock()
				if prev, ok := w.acks[m.Subject]; !ok || prev.Error != nil {
					w.acks[m.Subject] = a
				}
				see(w.ackSeen, m.Subject, i)
				w.mu.Unlock()
			}},
		}
		for _, s := range subs {
			sub, err := nc.Subscribe(s.subject, s.handle)
			if err == nil {
				err = sub.SetPendingLimits(-1, -1)
			}
			if err != nil {
				w.Close()
				return nil, fmt.Errorf("witness: subscribe to %s at %s: %w", s.subject, u, err)
			}
		}
		if err := nc.Flush(); err != nil {
			w.Close()
			return nil, fmt.Errorf("witness: at %s: %w", u, err)
		}
	}
	return w, nil
}

// Close closes the Witness's connections.
func (w *Witness) Close() {
	for _, nc := range w.conns {
		nc.Close()
	}
}

// Acknowledged returns how many publishes of answers the Witness saw
// acknowledged as stored.
func (w *Witness) Acknowledged() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for inbox := range w.published {
		if a, ok := w.acks[inbox]; ok && a.Error == nil {
			n++
		}
	}
	return n
}

// Fates of a missing answer, as Explain tells them.
const (
	FateNeverPublished = "never published"
	FateNotAcked       = "published, never acknowledged as stored"
	FateAckedLost      = "acknowledged as stored, then absent from the stream"
	FateAckedStored    = "acknowledged and still stored (the reader missed it)"
)

// Explanation is what Explain found for the answers asked about.
type Explanation struct {
	// Fates counts the answers by fate.
	Fates map[string]int
	// Details are lines on the first answers of each fate.
	Details []string
}

// String renders e on one line per detail after the counts.
func (e Explanation) String() string {
	fates := make([]string, 0, len(e.Fates))
	for f, n := range e.Fates {
		fates = append(fates, fmt.Sprintf("%s: %d", f, n))
	}
	sort.Strings(fates)
	return strings.Join(fates, "; ") + "\n" + strings.Join(e.Details, "\n")
}

// Explain tells the fate of the answers to the input messages corrs,
// missing from the answers stream, looking up acknowledged sequences in
// the stream through js.
func (w *Witness) Explain(ctx context.Context, js jetstream.JetStream, corrs []int) (Explanation, error) {
	st, err := js.Stream(ctx, w.stream)
	if err != nil {
		return Explanation{}, fmt.Errorf("witness: %w", err)
	}
	return w.explain(corrs, func(seq uint64) (int, bool, error) {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		corr, err := strconv.Atoi(m.Header.Get(bus.CorrelationKey))
		if err != nil {
			return 0, false, fmt.Errorf("stream message %d: no numeric correlation: %w", seq, err)
		}
		return corr, true, nil
	})
}

// explain is Explain with the stream's lookup of a sequence's answer
// (its correlation, or not found) as a function.
func (w *Witness) explain(corrs []int, at func(seq uint64) (corr int, found bool, err error)) (Explanation, error) {
	w.mu.Lock()
	inboxes := map[int][]string{}
	for inbox, corr := range w.published {
		inboxes[corr] = append(inboxes[corr], inbox)
	}
	acks := make(map[string]ackOf, len(w.acks))
	for inbox, a := range w.acks {
		acks[inbox] = a
	}
	w.mu.Unlock()

	e := Explanation{Fates: map[string]int{}}
	shown := map[string]int{}
	for _, corr := range corrs {
		fate, detail := FateNeverPublished, ""
		var refusals []string
		sort.Strings(inboxes[corr])
		for _, inbox := range inboxes[corr] {
			a, ok := acks[inbox]
			switch {
			case !ok:
				continue
			case a.Error != nil:
				refusals = append(refusals, a.Error.Description)
				continue
			}
			holder, found, err := at(a.Seq)
			if err != nil {
				return e, fmt.Errorf("witness: answer %d: %w", corr, err)
			}
			dup := ""
			if a.Duplicate {
				dup = " (as a duplicate)"
			}
			switch {
			case found && holder == corr:
				fate, detail = FateAckedStored, fmt.Sprintf("acknowledged as sequence %d%s, which holds it", a.Seq, dup)
			case found:
				fate, detail = FateAckedLost, fmt.Sprintf("acknowledged as sequence %d%s, which now holds the answer to %d", a.Seq, dup, holder)
			default:
				fate, detail = FateAckedLost, fmt.Sprintf("acknowledged as sequence %d%s, which the stream does not hold", a.Seq, dup)
			}
			if fate == FateAckedStored {
				break
			}
		}
		if fate == FateNeverPublished && len(inboxes[corr]) > 0 {
			fate, detail = FateNotAcked, fmt.Sprintf("refusals seen: %q", refusals)
		}
		e.Fates[fate]++
		if shown[fate] < 8 {
			shown[fate]++
			line := fmt.Sprintf("answer %d: %s; published %d times", corr, fate, len(inboxes[corr]))
			if detail != "" {
				line += "; " + detail
			}
			e.Details = append(e.Details, line)
		}
	}
	return e, nil
}

// Audit checks every acknowledgement the Witness saw of an answer against
// the stream's answers (sequence → correlation, as read): acked counts
// the acknowledged publishes, lost those whose sequence holds another
// answer or none, and details tells the first few of them: what the
// sequence holds, every publish of the same answer, and where the stream
// holds it. A stream that loses what it acknowledged shows here even when
// the answer was published again (its publisher never got the
// acknowledgement) or its input redelivered and answered again, either
// of which hides the loss from the answers.
func (w *Witness) Audit(answers []Answer) (acked, lost int, details []string) {
	stored := make(map[uint64]Answer, len(answers))
	for _, a := range answers {
		stored[a.Seq] = a
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var lostCorrs []int
	for inbox, corr := range w.published {
		a, ok := w.acks[inbox]
		if !ok || a.Error != nil {
			continue
		}
		acked++
		if holder, found := stored[a.Seq]; found && holder.Corr == corr {
			continue
		}
		lost++
		lostCorrs = append(lostCorrs, corr)
	}
	if lost == 0 {
		return acked, 0, nil
	}
	at := map[int][]string{} // correlation → where the stream holds its answer
	for _, a := range answers {
		at[a.Corr] = append(at[a.Corr], fmt.Sprintf("%d (stored %s)", a.Seq, a.At.UTC().Format("15:04:05.000")))
	}
	publishes := map[int][]string{}
	for inbox, corr := range w.published {
		publishes[corr] = append(publishes[corr], inbox)
	}
	sort.Ints(lostCorrs)
	for i, corr := range lostCorrs {
		if len(details) == 8 || (i > 0 && lostCorrs[i-1] == corr) {
			continue
		}
		var pubs []string
		for _, inbox := range publishes[corr] {
			a, ok := w.acks[inbox]
			pub := "seen " + w.pubSeen[inbox].String() + ", "
			switch {
			case !ok:
				pub += "no acknowledgement seen"
			case a.Error != nil:
				pub += "refused: " + a.Error.Description
			default:
				what := "nothing"
				if holder, found := stored[a.Seq]; found {
					what = fmt.Sprintf("the answer to %d (stored %s)", holder.Corr, holder.At.UTC().Format("15:04:05.000"))
				}
				dup := ""
				if a.Duplicate {
					dup = " as a duplicate"
				}
				pub += fmt.Sprintf("acknowledged%s %s as sequence %d, which holds %s", dup, w.ackSeen[inbox], a.Seq, what)
			}
			pubs = append(pubs, pub)
		}
		sort.Strings(pubs)
		details = append(details, fmt.Sprintf("answer %d: published %d times (%s); the stream holds it at %v", corr, len(pubs), strings.Join(pubs, "; "), at[corr]))
	}
	return acked, lost, details
}
