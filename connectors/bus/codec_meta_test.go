package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/internal/ijson"
)

// metaFromMetadataRef is metaFromMetadata as it was before it was made to
// allocate less (maps and encoding/json throughout): the reference the
// faster one must match byte for byte.
func metaFromMetadataRef(check *ijson.Checker, md message.Metadata, uuid string) ([]byte, error) {
	jsonKeys, marked := md[JSONKeysKey]
	isJSON := map[string]bool{}
	for _, k := range strings.Split(jsonKeys, ",") {
		isJSON[strings.TrimSpace(k)] = true
	}
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	fields := map[string]json.RawMessage{}
	if uuid != "" {
		fields[MessageIDMeta], _ = json.Marshal(uuid)
	}
	for k, v := range md {
		if k == JSONKeysKey || k == DeliveredKey || k == MessageIDMeta || k == DecodeErrorKey {
			continue
		}
		if !utf8.ValidString(k) {
			fail(fmt.Errorf("%w: metadata name %q is not valid UTF-8", ErrNotIJSON, k))
			continue
		}
		name := k
		if k == CorrelationKey {
			name = CorrelationMeta
		} else if k == CorrelationMeta {
			if _, both := md[CorrelationKey]; both {
				continue
			}
		}
		trimmed := strings.TrimSpace(v)
		asJSON := marked && isJSON[k] || !marked && (strings.HasPrefix(trimmed, "{") || strings.HasPrefix(trimmed, "["))
		if asJSON {
			rep, err := check.Check([]byte(trimmed), "meta."+name)
			switch {
			case err == nil && rep.BadString == nil:
				fields[name] = json.RawMessage(trimmed)
				continue
			case !marked:
			case err == nil:
				fail(fmt.Errorf("%w: %w", ErrNotIJSON, rep.BadString))
			case !errors.Is(err, ijson.ErrSyntax):
				fail(fmt.Errorf("%w: %w", ErrNotIJSON, err))
			}
		}
		if !utf8.ValidString(v) {
			fail(fmt.Errorf("%w: metadata %q is not valid UTF-8", ErrNotIJSON, k))
		}
		s, _ := json.Marshal(v)
		fields[name] = s
	}
	if len(fields) == 0 {
		return nil, firstErr
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(fields[k])
	}
	b.WriteByte('}')
	return b.Bytes(), firstErr
}

// TestMetaFromMetadataMatchesReference: on random metadata (names and
// values with characters JSON escapes, HTML characters, U+2028, invalid
// UTF-8, values that look like JSON or are JSON, marked or not, the
// correlation keys), metaFromMetadata gives the bytes and the error of the
// reference. At most one of the errors is reported, the first met in map
// order, so only whether there is one is compared when several could be.
func TestMetaFromMetadataMatchesReference(t *testing.T) {
	names := []string{"a", "b", "kind", "x-y", "é", "<tag>", "q\"uote", "back\\slash", "\xff", "tab\t",
		CorrelationKey, CorrelationMeta, MessageIDMeta, DeliveredKey, "partition", "offset"}
	values := []string{"", "plain", "  spaced  ", "<b>&amp;</b>", "quote\"d", "back\\slash", "new\nline", "\u2028",
		"héllo", "\xff\xfe", "{}", `{"a":1}`, ` [1,2] `, "{not json", `{"a":1,"a":2}`, `{"s":"\ud800"}`, "42", "true",
		"\x7f", "ctl\x01", "日本"}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20_000 {
		md := message.Metadata{}
		for range rng.IntN(6) {
			md[names[rng.IntN(len(names))]] = values[rng.IntN(len(values))]
		}
		switch rng.IntN(4) {
		case 0: // not marked: JSON-looking values are read as JSON
		case 1:
			md[JSONKeysKey] = ""
		default:
			var ks []string
			for k := range md {
				if rng.IntN(2) == 0 {
					ks = append(ks, strings.Repeat(" ", rng.IntN(2))+k)
				}
			}
			md[JSONKeysKey] = strings.Join(ks, ",")
		}
		uuid := ""
		if rng.IntN(3) > 0 {
			uuid = values[rng.IntN(len(values))]
		}
		var c1, c2 ijson.Checker
		got, gerr := metaFromMetadata(&c1, md, uuid)
		want, werr := metaFromMetadataRef(&c2, md, uuid)
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d %q uuid %q:\n got  %s\n want %s", i, md, uuid, got, want)
		}
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("case %d %q: error %v, want %v", i, md, gerr, werr)
		}
	}
}

// BenchmarkToEvent measures converting a typical received message (a
// correlation, a JSON kv command, three broker fields) into an event.
func BenchmarkToEvent(b *testing.B) {
	m := message.NewMessage("1718000000000-0", []byte(`{"i":1}`))
	m.Metadata.Set(CorrelationKey, "c-1")
	m.Metadata.Set("kv", `{"put":"p/1"}`)
	m.Metadata.Set(JSONKeysKey, "kv")
	m.Metadata.Set("redis_stream", "in")
	m.Metadata.Set("redis_consumer", "c")
	m.Metadata.Set(DeliveredKey, "1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ToEvent(m); err != nil {
			b.Fatal(err)
		}
	}
}
