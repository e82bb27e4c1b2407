package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// diskFlow is a flow whose store lives in %s, with every outcome on
// stdout and input lines of up to 64 MiB (for one big batch).
const diskFlow = `name: diskfull
connectors:
  input:   { type: stdin, max_line_bytes: 64MiB }
  store:   { type: kv, dir: %s }
  results: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> results/in
  - store/out -> results/in
  - store/err -> results/in
`

// requireRoot skips t unless it may mount filesystems.
func requireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("mounts a filesystem and builds the flowrun binary")
	}
	if os.Geteuid() != 0 {
		t.Skipf("mounting a filesystem needs root; running as uid %d", os.Geteuid())
	}
}

// mount runs mount with args, skipping t when the system does not allow it,
// and unmounts dir when t ends.
func mount(t *testing.T, dir string, args ...string) {
	t.Helper()
	if out, err := exec.Command("mount", append(args, dir)...).CombinedOutput(); err != nil {
		t.Skipf("cannot mount here (mount %s): %v: %s", strings.Join(args, " "), err, out)
	}
	t.Cleanup(func() { unmount(t, dir) })
}

// unmount unmounts dir, lazily if it is busy; unmounting something not
// mounted is not an error.
func unmount(t *testing.T, dir string) {
	if !isMounted(dir) {
		return
	}
	if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
		if out2, err2 := exec.Command("umount", "-l", dir).CombinedOutput(); err2 != nil {
			t.Errorf("umount %s: %v: %s; umount -l: %v: %s", dir, err, out, err2, out2)
		}
	}
}

func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

// mountTmpfs mounts a tmpfs of size on a new directory.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	mount(t, dir, "-t", "tmpfs", "-o", "size="+size, "tmpfs")
	return dir
}

// diskFlowFile writes the flow with its store in storeDir.
func diskFlowFile(t *testing.T, storeDir string) string {
	t.Helper()
	flow := filepath.Join(t.TempDir(), "flow.yaml")
	if err := os.WriteFile(flow, []byte(fmt.Sprintf(diskFlow, storeDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	return flow
}

// bigValue returns a 100 KB value for key that does not compress, so that
// flushes need as much room as the log: the key, then the rest of
// noise. (Drawing each of its letters from math/rand took 10 s of the
// test under the race detector for 400 values.)
func bigValue(key string) string {
	n := noise()
	return key + n[len(key):]
}

// noise is 100 KB that do not compress, made once: 75,000 bytes of a
// ChaCha8 stream in base64, which JSON strings take as it is.
var noise = sync.OnceValue(func() string {
	raw := make([]byte, 75_000)
	_, _ = rand.NewChaCha8([32]byte{'f', 'l', 'o', 'w', 'r', 'u', 'n'}).Read(raw)
	return base64.StdEncoding.EncodeToString(raw)
})

func putLine(key string) string {
	// Keys and bigValue's base64 need no escaping in JSON.
	return `{"data":"` + bigValue(key) + `","meta":{"kv":{"put":"` + key + `"},"correlation":"` + key + `"}}` + "\n"
}

// ask sends line to c and returns the next result line.
func (c *child) ask(t *testing.T, line string) string {
	t.Helper()
	if _, err := c.stdin.Write([]byte(line)); err != nil {
		t.Fatalf("writing to flowrun: %v; stderr: %s", err, c.stderr.String())
	}
	select {
	case res, ok := <-c.lines:
		if !ok {
			t.Fatalf("flowrun stopped; stderr: %s", c.stderr.String())
		}
		return res
	case <-time.After(60 * time.Second):
		t.Fatalf("no result within 60s; stderr: %s", c.stderr.String())
	}
	return ""
}

// putsUntilFailure sends up to n puts of 100 KB one at a time, stopping a
// few puts after the first failure, and adds the acknowledged ones to
// acked. It checks that a failure names want and that every put after it
// fails too. inject, when set, is called once after the first `after`
// puts.
func putsUntilFailure(t *testing.T, c *child, prefix string, n int, want string, acked map[string]bool, after int, inject func()) {
	t.Helper()
	var failures []string
	for i := 0; i < n && len(failures) < 5; i++ {
		if inject != nil && i == after {
			inject()
		}
		key := fmt.Sprintf("%s%d", prefix, i)
		res := c.ask(t, putLine(key))
		if msg := gjson.Get(res, "meta.error"); msg.Exists() {
			failures = append(failures, msg.String())
			continue
		}
		if len(failures) > 0 {
			t.Errorf("put %s acknowledged after an earlier put failed", key)
		}
		acked[key] = true
	}
	if len(failures) == 0 {
		t.Fatalf("no put failed (%d acknowledged)", len(acked))
	}
	t.Logf("%d puts acknowledged, then: %s", len(acked), failures[0])
	for _, f := range failures {
		if !strings.Contains(f, want) {
			t.Errorf("failure does not name %q: %s", want, f)
		}
	}
}

// stopChild sends SIGTERM to c and checks that it exits, without a panic,
// with exit code 1 (its store failed) and stderr naming want.
func stopChild(t *testing.T, c *child, want string) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	_ = c.stdin.Close()
	exited := make(chan error, 1)
	go func() {
		<-c.done
		exited <- c.cmd.Wait()
	}()
	var err error
	select {
	case err = <-exited:
	case <-time.After(60 * time.Second):
		_ = c.cmd.Process.Kill()
		t.Fatalf("flowrun did not stop after SIGTERM; stderr: %s", c.stderr.String())
	}
	stderr := c.stderr.String()
	checkNoCrash(t, stderr)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("flowrun after SIGTERM: %v, want exit code 1; stderr: %s", err, stderr)
	}
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr does not name %q: %s", want, stderr)
	}
	if n := strings.Count(stderr, "\n"); n > 10 {
		t.Errorf("%d stderr lines, want a few (no log flood):\n%.3000s", n, stderr)
	}
	t.Logf("stopped by SIGTERM: %v, %d stderr lines", err, strings.Count(stderr, "\n"))
}

func checkNoCrash(t *testing.T, stderr string) {
	t.Helper()
	for _, bad := range []string{"panic", "fatal error", "goroutine "} {
		if strings.Contains(stderr, bad) {
			t.Errorf("stderr contains %q:\n%s", bad, stderr)
			return
		}
	}
}

// restartFails runs flowrun on the flow and checks that it fails at start
// within a few seconds, with one clear error naming want.
func restartFails(t *testing.T, bin, flow, want string) {
	t.Helper()
	cmd := exec.Command(bin, "run", flow)
	cmd.Stdin = strings.NewReader(`{"meta":{"kv":{"get":"x"}}}` + "\n")
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("restart did not end within 30s; stderr has %d bytes: %.2000s", len(errOut.String()), errOut.String())
	}
	elapsed := time.Since(start)
	stderr := errOut.String()
	checkNoCrash(t, stderr)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("restart: %v, want exit code 1; stderr: %s", err, stderr)
	}
	if !strings.Contains(stderr, want) {
		t.Errorf("restart stderr does not name %q: %s", want, stderr)
	}
	if n := strings.Count(stderr, "\n"); n > 5 {
		t.Errorf("restart wrote %d stderr lines, want a few:\n%s", n, stderr)
	}
	if out.String() != "" {
		t.Errorf("restart wrote results: %.500s", out.String())
	}
	t.Logf("restart failed after %v: %s", elapsed.Round(time.Millisecond), strings.TrimSpace(stderr))
}

// checkAcked restarts flowrun on the flow and checks that every
// acknowledged key holds its value and that absent keys are absent.
func checkAcked(t *testing.T, bin, flow string, acked map[string]bool, absent ...string) {
	t.Helper()
	c := startChild(t, bin, flow)
	defer c.kill()
	for key := range acked {
		res := c.ask(t, fmt.Sprintf(`{"meta":{"kv":{"get":%q}}}`+"\n", key))
		if gjson.Get(res, "data").String() != bigValue(key) {
			t.Errorf("acknowledged put %s not found after restart: %.300s", key, res)
		}
	}
	for _, key := range absent {
		res := c.ask(t, fmt.Sprintf(`{"meta":{"kv":{"get":%q}}}`+"\n", key))
		if gjson.Get(res, "meta.kv.found").Bool() {
			t.Errorf("refused put %s found after restart", key)
		}
	}
	t.Logf("restart found all %d acknowledged puts", len(acked))
}

// fillDisk fills the filesystem of dir with a file until it is full.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{1}, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	for {
		if _, err := f.Write(chunk[:512]); err != nil {
			break
		}
	}
	return path
}

// TestDiskFull runs `flowrun run` on a store in a 20 MB tmpfs and writes
// 400 puts of 100 KB, one at a time or as one batch. Failing commands must
// come out on err naming "no space left on device", every later command
// fail the same way, SIGTERM stop the process cleanly, a restart while the
// disk is still full fail within seconds with one error, and a restart
// after the filesystem grew find every acknowledged put.
func TestDiskFull(t *testing.T) {
	requireRoot(t)
	bin := buildFlowrun(t)
	const noSpace = "no space left on device"
	for _, mode := range []string{"puts", "batch"} {
		t.Run(mode, func(t *testing.T) {
			mnt := mountTmpfs(t, "20m")
			flow := diskFlowFile(t, filepath.Join(mnt, "state"))
			c := startChild(t, bin, flow)
			defer c.kill()
			acked := map[string]bool{}
			var absent []string
			if mode == "puts" {
				putsUntilFailure(t, c, "k", 400, noSpace, acked, -1, nil)
			} else {
				for i := range 3 {
					key := fmt.Sprintf("small%d", i)
					if res := c.ask(t, putLine(key)); gjson.Get(res, "meta.error").Exists() {
						t.Fatalf("put before the batch: %s", res)
					}
					acked[key] = true
				}
				var batch strings.Builder
				batch.Grow(400 * 100_050)
				batch.WriteString(`{"data":null,"meta":{"kv":{"batch":[`)
				for i := range 400 {
					if i > 0 {
						batch.WriteByte(',')
					}
					key := fmt.Sprintf("b%d", i)
					// No escaping: keys and values need none (%q took
					// seconds per batch under the race detector).
					batch.WriteString(`{"put":"` + key + `","value":"`)
					batch.WriteString(bigValue(key))
					batch.WriteString(`"}`)
					if i%50 == 0 {
						absent = append(absent, key)
					}
				}
				batch.WriteString(`]},"correlation":"big"}}` + "\n")
				res := c.ask(t, batch.String())
				msg := gjson.Get(res, "meta.error").String()
				if !strings.Contains(msg, noSpace) {
					t.Fatalf("batch of 400 puts of 100 KB: %.500s", res)
				}
				t.Logf("batch: %s", msg)
				res = c.ask(t, putLine("after"))
				if msg := gjson.Get(res, "meta.error").String(); !strings.Contains(msg, noSpace) {
					t.Errorf("put after the failed batch: %.500s", res)
				}
				absent = append(absent, "after")
			}
			stopChild(t, c, noSpace)

			filler := fillDisk(t, mnt)
			restartFails(t, bin, flow, noSpace)

			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("mount", "-o", "remount,size=256m", mnt).CombinedOutput(); err != nil {
				t.Fatalf("remount larger: %v: %s", err, out)
			}
			checkAcked(t, bin, flow, acked, absent...)
		})
	}
}

// TestFilesystemGoesReadOnly runs `flowrun run` on a store in an ext4
// filesystem that turns read-only under it, as ext4 mounted with
// errors=remount-ro does after an I/O error. (`mount -o remount,ro` is
// refused with "busy" while a file is open for writing, and the store
// always has its log open, so the test first checks that and then triggers
// the error remount through /sys/fs/ext4/DEV/trigger_fs_error.) Puts after
// it must fail on err naming "read-only file system", SIGTERM stop the
// process cleanly, a restart while read-only fail at once with one error,
// and a restart after a read-write remount find every acknowledged put.
func TestFilesystemGoesReadOnly(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"mkfs.ext4", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
	bin := buildFlowrun(t)
	img := filepath.Join(t.TempDir(), "ext4.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	mnt := t.TempDir()
	mount(t, mnt, "-o", "loop,errors=remount-ro", img)
	dev := ""
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[1] == mnt {
				dev = filepath.Base(f[0])
			}
		}
	}
	trigger := filepath.Join("/sys/fs/ext4", dev, "trigger_fs_error")
	if _, err := os.Stat(trigger); dev == "" || err != nil {
		t.Skipf("cannot make ext4 fail here: no %s (%v)", trigger, err)
	}

	const readOnly = "read-only file system"
	flow := diskFlowFile(t, filepath.Join(mnt, "state"))
	c := startChild(t, bin, flow)
	defer c.kill()
	acked := map[string]bool{}
	putsUntilFailure(t, c, "k", 100, readOnly, acked, 20, func() {
		out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput()
		t.Logf("mount -o remount,ro while the store runs: %v: %s", err, bytes.TrimSpace(out))
		if err := os.WriteFile(trigger, []byte("test\n"), 0o200); err != nil {
			t.Fatalf("trigger an ext4 error: %v", err)
		}
	})
	stopChild(t, c, readOnly)
	restartFails(t, bin, flow, readOnly)

	unmount(t, mnt)
	if out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput(); err != nil {
		t.Logf("e2fsck: %v: %s", err, out) // it repairs and exits non-zero
	}
	mount(t, mnt, "-o", "loop", img)
	checkAcked(t, bin, flow, acked)
}
