package etcdstore

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flowrun/flowrun/connectors/kv"
)

// benchStore opens a store on FLOWRUN_ETCD_ENDPOINTS under a fresh prefix
// holding keys k0000.. set to "0", or skips the benchmark.
func benchStore(b *testing.B, keys int, reads ReadConsistency) *Store {
	b.Helper()
	env := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	if env == "" {
		b.Skip("FLOWRUN_ETCD_ENDPOINTS is not set; start a cluster with scripts/etcd-cluster.sh start")
	}
	eps := strings.Split(env, ",")
	prefix := "flowrun-bench/" + strconv.FormatInt(int64(os.Getpid()), 36) + "/" + b.Name() + "/"
	s, err := Open(b.Context(), Options{Endpoints: eps, Prefix: prefix, Reads: reads})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = s.Close()
		c, err := Open(context.Background(), Options{Endpoints: eps})
		if err == nil {
			_, _ = c.client.Delete(context.Background(), prefix, clientv3.WithPrefix())
			_ = c.Close()
		}
	})
	names := keyNames(keys)
	for i := 0; i < keys; i += 128 {
		var fns []kv.TxnFunc
		for _, k := range names[i:min(i+128, keys)] {
			fns = append(fns, setFn(k, "0", 0))
		}
		errs := make([]error, len(fns))
		if err := s.Update(b.Context(), fns, errs); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkStore measures slices of 1000 hinted point reads (View) and
// read-modify-writes (UpdateHinted) over 10000 keys, each op one fn, in
// groups of etcd's default 128 keys: the store's own cost and its round
// trips, without the kv connector.
func BenchmarkStore(b *testing.B) {
	const keys, slice = 10_000, 1000
	for _, bc := range []struct {
		name  string
		write bool
		reads ReadConsistency
	}{
		{"view/linearizable", false, Linearizable},
		{"view/serializable", false, Serializable},
		{"increment/linearizable", true, Linearizable},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := benchStore(b, keys, bc.reads)
			names := keyNames(keys)
			order := make([]string, slice)
			got := make([]string, slice)
			errs := make([]error, slice)
			ops := 0
			for n := 0; b.Loop(); n++ {
				for i := range order {
					order[i] = names[(n*slice+i*7919)%keys]
				}
				var err error
				if bc.write {
					fns, hints := incFns(order, slice)
					err = s.UpdateHinted(b.Context(), fns, hints, errs)
				} else {
					fns, hints := getFns(order, slice, got)
					err = s.ViewHinted(b.Context(), fns, hints, errs)
				}
				if err != nil {
					b.Fatal(err)
				}
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
				ops += slice
			}
			b.ReportMetric(float64(ops)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
