package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHTTPKVExample runs examples/http-kv/flow.yaml with the real binary
// (on a free port instead of 8080), sends the requests of its README and
// checks each answer, then stops it with SIGTERM and expects exit 0.
func TestHTTPKVExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary")
	}
	bin := buildFlowrun(t)
	dir := copyExample(t, "http-kv")
	flow := filepath.Join(dir, "flow.yaml")
	src := readFile(t, flow)
	if !strings.Contains(src, `"127.0.0.1:8080"`) {
		t.Fatal("the example no longer listens on 127.0.0.1:8080; update this test")
	}
	if err := os.WriteFile(flow, []byte(strings.Replace(src, `"127.0.0.1:8080"`, `"127.0.0.1:0"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", flow)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	addrRe := regexp.MustCompile(`http_server listening.* address=(\S+)`)
	var url string
	for deadline := time.Now().Add(20 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := addrRe.FindStringSubmatch(stderr.String()); m != nil {
			url = "http://" + m[1]
		}
	}
	if url == "" {
		t.Fatalf("no listening address logged: %s", stderr.String())
	}
	c := &http.Client{Timeout: 20 * time.Second}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := c.Get(url + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %v; stderr: %s", err, stderr.String())
		}
	}
	steps := []struct {
		contentType, meta, body string
		status                  int
		want                    string
	}{
		{"", "", `{"data":"badger","meta":{"kv":{"put":"snot"},"correlation":1}}`, 200,
			`{"data":"badger","meta":{"kv":{"op":"put","key":"snot","found":true},"correlation":1}}`},
		{"", "", `{"data":null,"meta":{"kv":{"get":"snot"},"correlation":2}}`, 200,
			`{"data":"badger","meta":{"kv":{"op":"get","key":"snot","found":true},"correlation":2}}`},
		{"", "", `{"data":"mayo","meta":{"kv":{"cas":"snot","old":"gies"},"correlation":3}}`, 422,
			`"error":"cas \"snot\": expected \"gies\", found \"badger\": compare mismatch"`},
		{"", `{"kv":{"increment":"visits","by":2}}`, `null`, 200,
			`{"data":2,"meta":{"kv":{"op":"increment","key":"visits","found":false}}}`},
		{"application/x-ndjson", "", "{\"data\":1,\"meta\":{\"kv\":{\"put\":\"a\"}}}\n{\"data\":null,\"meta\":{\"kv\":{\"get\":\"a\"}}}\n", 200,
			`[{"data":1,"meta":{"kv":{"op":"put","key":"a","found":true}}},{"data":1,"meta":{"kv":{"op":"get","key":"a","found":true}}}]`},
	}
	for _, s := range steps {
		req, _ := http.NewRequest(http.MethodPost, url+"/", strings.NewReader(s.body))
		if s.contentType != "" {
			req.Header.Set("Content-Type", s.contentType)
		}
		if s.meta != "" {
			req.Header.Set("Flowrun-Meta", s.meta)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != s.status || !bytes.Contains(b, []byte(s.want)) {
			t.Errorf("%s:\n got %d %s\nwant %d %s", s.body, resp.StatusCode, b, s.status, s.want)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("flowrun run after SIGTERM: %v\nstderr: %s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("flowrun did not stop after SIGTERM; stderr: %s", stderr.String())
	}
}
