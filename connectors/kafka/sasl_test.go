package kafka_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// TestSASL: against a kfake broker requiring SASL, a flow authenticating
// with the password from ${VAR} moves records; with a wrong password and
// fail_fast it does not build.
func TestSASL(t *testing.T) {
	for _, mech := range []string{kafka.SASLPlain, kafka.SASLScramSHA256, kafka.SASLScramSHA512} {
		t.Run(mech, func(t *testing.T) {
			c := startCluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "flow", "s3cret"))
			brokers := c.ListenAddrs()
			m, err := kafka.SASLMechanism(mech, "flow", "s3cret")
			must(t, err)
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.SASL(m), kgo.ConsumeTopics("out"),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			must(t, err)
			defer cl.Close()
			_, err = kadm.NewClient(cl).CreateTopics(context.Background(), 1, 1, nil, "in", "out")
			must(t, err)
			must(t, cl.ProduceSync(context.Background(), &kgo.Record{Topic: "in", Value: []byte(`{"n":1}`)}).FirstErr())

			for _, tc := range []struct {
				password string
				ok       bool
			}{{"wrong", false}, {"s3cret", true}} {
				t.Setenv("KAFKA_TEST_PASSWORD", tc.password)
				dir := t.TempDir()
				path := filepath.Join(dir, "flow.yaml")
				b := strings.Join(brokers, ",")
				must(t, os.WriteFile(path, []byte(fmt.Sprintf(`name: sasl
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: g, fail_fast: true, connect_timeout: 2s,
            sasl_mechanism: %s, sasl_user: flow, sasl_password: "${KAFKA_TEST_PASSWORD}" }
  output: { type: kafka, mode: write, brokers: %q, topic: out,
            sasl_mechanism: %s, sasl_user: flow, sasl_password: "${KAFKA_TEST_PASSWORD}" }
links:
  - input/out -> output/in
`, b, mech, b, mech)), 0o644))
				f, diags, err := flows.Load(path, builtin.NewRegistry())
				if err != nil {
					t.Fatalf("load: %v %v", err, diags)
				}
				built, err := f.Build(context.Background(), flows.BuildOptions{Resources: component.NewResources()})
				if !tc.ok {
					if err == nil || strings.Contains(err.Error(), tc.password) {
						t.Fatalf("build with a wrong password: %v", err)
					}
					continue
				}
				must(t, err)
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- built.Run(ctx) }()
				pctx, pcancel := context.WithTimeout(context.Background(), 20*time.Second)
				recs := cl.PollFetches(pctx).Records()
				pcancel()
				cancel()
				must(t, <-done)
				if len(recs) != 1 || string(recs[0].Value) != `{"n":1}` {
					t.Fatalf("out: %v", recs)
				}
			}
		})
	}
}
