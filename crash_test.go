package flowrun_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowrun/flowrun"
)

// crashDirEnv, when set, makes TestCrashChild the child process of
// TestDurableAfterKill, writing to the store in that directory.
const crashDirEnv = "FLOWRUN_EMBED_CRASH_DIR"

// TestCrashChild is the process TestDurableAfterKill kills: several
// goroutines put keys and increment a counter, printing each write to
// stdout only once its call has returned nil ("put KEY VALUE", "inc N").
// It runs until killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("the child process of TestDurableAfterKill")
	}
	ctx := context.Background()
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	ns := st.Namespace("crash")
	epoch := os.Getenv(crashDirEnv + "_EPOCH")
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...) // unbuffered: one write
	}
	for w := range 4 {
		go func() {
			for i := 0; ; i++ {
				k := fmt.Sprintf("e%s:w%d:%d", epoch, w, i)
				v := strconv.Itoa(i)
				if err := ns.Put(ctx, k, []byte(v), flowrun.PutOptions{}); err != nil {
					say("error %v", err)
					return
				}
				say("put %s %s", k, v)
				n, err := ns.Increment(ctx, "counter", 1)
				if err != nil {
					say("error %v", err)
					return
				}
				say("inc %d", n)
			}
		}()
	}
	select {}
}

// TestDurableAfterKill kills a process writing to a store (SIGKILL, no
// chance to close it) once it has acknowledged a number of writes, then
// opens the store again: every acknowledged put is there with its value,
// and the counter is at least the highest value an increment returned.
// It repeats on the same directory, so recovery of a recovered store is
// covered too.
func TestDurableAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills child processes")
	}
	dir := t.TempDir()
	const rounds, acks = 3, 300
	puts := map[string]string{}
	var maxInc int64
	for r := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashDirEnv+"_EPOCH="+strconv.Itoa(r))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for n < acks && sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 3 && f[0] == "put":
				puts[f[1]] = f[2]
				n++
			case len(f) == 2 && f[0] == "inc":
				v, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					t.Fatalf("child printed %q", sc.Text())
				}
				maxInc = max(maxInc, v)
				n++
			default:
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("child printed %q; stderr:\n%s", sc.Text(), stderr.String())
			}
		}
		// Killed right after the last acknowledgement read, with writes
		// of other goroutines still in flight.
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if n < acks {
			t.Fatalf("round %d: child stopped after %d acknowledgements; stderr:\n%s", r, n, stderr.String())
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
		if err != nil {
			cancel()
			t.Fatalf("round %d: reopening after the kill: %v", r, err)
		}
		ns := st.Namespace("crash")
		for k, want := range puts {
			got, found, err := ns.Get(ctx, k)
			if err != nil || !found || string(got) != want {
				t.Errorf("round %d: acknowledged put %s = %s lost: found=%t %s, %v", r, k, want, found, got, err)
			}
		}
		got, _, err := ns.Get(ctx, "counter")
		if c, perr := strconv.ParseInt(string(got), 10, 64); err != nil || perr != nil || c < maxInc {
			t.Errorf("round %d: counter = %s (%v), an increment returned %d", r, got, err, maxInc)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		cancel()
		if t.Failed() {
			return
		}
	}
	t.Logf("%d acknowledged puts and a counter at %d survived %d kills", len(puts), maxInc, rounds)
}
