package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
)

// This file declares the etcd backend of the kv connector for flow files.

// resourceKey holds the Pool of the kv connectors of a build.
var resourceKey = component.NewKey[*Pool]("etcdstore.Pool")

// UsePool makes the kv connectors built with res share their etcd stores
// through p (one client per endpoints and prefix). Without it each build
// gets a pool of its own.
func UsePool(res *component.Resources, p *Pool) { resourceKey.Put(res, p) }

// Backend declares the etcd backend of the kv connector (kv.Spec): a store
// in an etcd cluster several flowrun processes share.
func Backend() kv.BackendSpec {
	return kv.BackendSpec{
		Name:           "etcd",
		Doc:            "an etcd cluster",
		DeletesExpired: true,
		Fields: []component.Field{
			{Name: "endpoints", Type: component.TypeStrings, Required: true,
				Doc: "Client URLs of the etcd cluster: a list, or one comma-separated string."},
			{Name: "prefix", Type: component.TypeString, Default: "flowrun/",
				Doc: "Prepended to every etcd key of the store; stores with different prefixes are independent."},
			{Name: "dial_timeout", Type: component.TypeDuration, Default: "5s", Min: "1ms",
				Doc: "How long connecting to the cluster may take when the flow starts."},
			{Name: "request_timeout", Type: component.TypeDuration, Default: "10s", Min: "1ms",
				Doc: "Longest wait for one etcd request; a commit timing out fails its commands with the outcome unknown."},
			{Name: "tls_cert", Type: component.TypePath,
				Doc: "Client certificate (PEM) for TLS; TLS is used when any tls_ option is set."},
			{Name: "tls_key", Type: component.TypePath, Doc: "Key of tls_cert (PEM)."},
			{Name: "tls_ca", Type: component.TypePath, Doc: "CA bundle (PEM) verifying the cluster's certificates."},
			{Name: "max_txn_ops", Type: component.TypeInt, Default: "128", Min: "1",
				Doc: "The cluster's --max-txn-ops: a command needing more writes in one transaction fails on err."},
			{Name: "max_request_bytes", Type: component.TypeByteSize, Default: "1536KiB", Min: "1", Max: "1GiB",
				Doc: "The cluster's --max-request-bytes: a command whose writes are larger fails on err."},
			{Name: "reads", Type: component.TypeEnum, Enum: []string{string(Linearizable), string(Serializable)}, Default: string(Linearizable),
				Doc: "First read of each commit group: linearizable sees every write acknowledged anywhere before it (a quorum round through the leader); serializable is answered by any member without one, still sees this process's own writes, but a read-only command may miss other processes' writes the member has not applied yet."},
		},
		Check: checkTLS,
		Open: func(ctx context.Context, env *component.Env, c *component.Config) (kv.Backend, string, error) {
			o := Options{
				Endpoints:       c.Strings("endpoints"),
				Prefix:          c.String("prefix"),
				DialTimeout:     c.Duration("dial_timeout"),
				RequestTimeout:  c.Duration("request_timeout"),
				CertFile:        c.String("tls_cert"),
				KeyFile:         c.String("tls_key"),
				CAFile:          c.String("tls_ca"),
				MaxTxnOps:       c.Int("max_txn_ops"),
				MaxRequestBytes: int(c.ByteSize("max_request_bytes")),
				Reads:           ReadConsistency(c.String("reads")),
			}
			b, err := resourceKey.Shared(env.Resources, NewPool).Open(ctx, o)
			return b, fmt.Sprintf("etcd %s prefix %q", strings.Join(o.Endpoints, ","), o.Prefix), err
		},
	}
}

// checkTLS loads the TLS files as Open will, without connecting: a missing
// or unreadable file, a key without its certificate or a file holding no
// PEM certificate is reported at its option.
func checkTLS(c *component.Config) error {
	cert, key, ca := c.String("tls_cert"), c.String("tls_key"), c.String("tls_ca")
	for _, opt := range []string{"tls_cert", "tls_key", "tls_ca"} {
		if err := regularFile(c.String(opt)); err != nil {
			return component.OptionErr(opt, err)
		}
	}
	switch {
	case cert != "" && key == "":
		return component.OptionErr("tls_cert", errors.New("a client certificate needs its key: set tls_key too"))
	case key != "" && cert == "":
		return component.OptionErr("tls_key", errors.New("a client key needs its certificate: set tls_cert too"))
	case cert != "":
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			return component.OptionErr("tls_cert", fmt.Errorf("TLS client certificate and key: %w", err))
		}
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return component.OptionErr("tls_ca", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return component.OptionErr("tls_ca", fmt.Errorf("%s holds no PEM certificate", ca))
		}
	}
	return nil
}

// regularFile refuses a path that is not a regular file (a device or a
// FIFO would block or never end when read); "" is no file.
func regularFile(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}
