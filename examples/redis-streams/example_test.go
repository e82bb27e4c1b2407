// Package redisstreams_test runs the Redis Streams example against a live
// redis-server (FLOWRUN_REDIS_URL). Its replay of the recorded messages is
// flow_test.yaml, run by `flowrun test` (cmd/flowrun TestExamples).
package redisstreams_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// TestLiveExample runs the example's flow against the server of
// FLOWRUN_REDIS_URL (on streams of its own) with the entries of the README:
// three results, and the entry without a player dead-lettered.
func TestLiveExample(t *testing.T) {
	url := os.Getenv("FLOWRUN_REDIS_URL")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("FLOWRUN_REDIS_URL is not set")
		}
		t.Skip("FLOWRUN_REDIS_URL is not set; see scripts/redis-server.sh")
	}
	dir := t.TempDir()
	b, err := os.ReadFile("flow.yaml")
	if err != nil {
		t.Fatal(err)
	}
	in, out := fmt.Sprintf("example.%d.in", time.Now().UnixNano()), fmt.Sprintf("example.%d.out", time.Now().UnixNano())
	flow := strings.NewReplacer(
		"stream: scores.in,", fmt.Sprintf("url: %q, stream: %q, retry_delay: 10ms,", url, in),
		"stream: scores.out,", fmt.Sprintf("url: %q, stream: %q,", url, out),
	).Replace(string(b))
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	defer c.Close()
	ctx := context.Background()
	for i, data := range []string{`{"player":"ann","points":3}`, `{"player":"bob","points":5}`, `{"player":"ann","points":4}`, `{"points":1}`} {
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: in, Values: []any{"data", data, "correlation_id", fmt.Sprintf("m-%d", i+1)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	loaded, diags, err := flows.Load(filepath.Join(dir, "flow.yaml"), builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	built, err := loaded.Build(ctx, flows.BuildOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- built.Run(runCtx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, _ := c.XLen(ctx, out).Result()
		d, _ := c.XLen(ctx, in+".dead").Result()
		if n >= 3 && d >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: %d results, %d dead letters", n, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	xs, err := c.XRange(ctx, out, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	scores := map[string]string{}
	for _, x := range xs {
		scores[fmt.Sprint(x.Values["correlation_id"])] = fmt.Sprint(x.Values["data"])
	}
	if len(xs) != 3 || scores["m-1"] != "3" || scores["m-2"] != "5" || scores["m-3"] != "7" {
		t.Errorf("results %v", scores)
	}
}
