package httpconn_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// BenchmarkHTTPSyncPut measures sync puts through http_server and a kv
// store on Pebble (fsync on, the default): 64 clients on keep-alive
// connections, each waiting for its answer before the next request. The
// jsonl sub-benchmark feeds the same commands through stdin into the same
// store configuration, for the ratio.
func BenchmarkHTTPSyncPut(b *testing.B) {
	const clients = 64
	body := func(i int) string {
		return fmt.Sprintf(`{"data":%d,"meta":{"kv":{"put":"k%d"},"correlation":%d}}`, i, i%10000, i)
	}
	b.Run("http", func(b *testing.B) {
		r := startFlow(b, kvFlow)
		r.client.Transport.(*http.Transport).MaxIdleConnsPerHost = clients
		var next atomic.Int64
		lat := make([][]time.Duration, clients)
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for c := range clients {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= b.N {
						return
					}
					t0 := time.Now()
					resp, err := r.client.Post(r.url, "application/json", strings.NewReader(body(i)))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					lat[c] = append(lat[c], time.Since(t0))
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		all := slices.Concat(lat...)
		slices.Sort(all)
		if len(all) > 0 {
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
		}
	})
	b.Run("jsonl", func(b *testing.B) {
		src := strings.ReplaceAll(`
name: jsonl-kv
connectors:
  in:    {type: stdin}
  store: {type: kv, dir: DIR}
  out:   {type: null}
links:
  - in/out -> store/in
  - in/err -> out/in
  - store/out -> out/in
  - store/err -> out/in
`, "DIR", b.TempDir())
		var input strings.Builder
		for i := range b.N {
			input.WriteString(body(i) + "\n")
		}
		flow, diags, err := flows.LoadBytes("flow.yaml", []byte(src), builtin.NewRegistry())
		if err != nil {
			b.Fatal(err, diags)
		}
		built, err := flow.Build(context.Background(), flows.BuildOptions{Stdin: strings.NewReader(input.String()), Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		start := time.Now()
		if err := built.Run(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
}
