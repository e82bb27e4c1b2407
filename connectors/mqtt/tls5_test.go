package mqtt_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/pipeline"
)

// writeCerts writes a CA and a server certificate for 127.0.0.1 signed by
// it into dir: ca.pem, server.pem, server.key.
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	write := func(name, typ string, der []byte) {
		must(t, os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowrun test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	must(t, err)
	write("ca.pem", "CERTIFICATE", caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &key.PublicKey, caKey)
	must(t, err)
	write("server.pem", "CERTIFICATE", srvDER)
	keyDER, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	write("server.key", "EC PRIVATE KEY", keyDER)
}

// startTLSBroker starts a mosquitto of the test's own with a TLS listener
// on a free port and returns its ssl:// URL and the CA's pool.
func startTLSBroker(t *testing.T) (string, *x509.CertPool) {
	t.Helper()
	mqttURL(t) // the same skip rule as the other broker tests
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
	}
	dir := t.TempDir()
	writeCerts(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	must(t, l.Close())
	user := os.Getenv("USER")
	if user == "" {
		user = "root"
	}
	conf := fmt.Sprintf("listener %s 127.0.0.1\nuser %s\nallow_anonymous true\ncafile %s\ncertfile %s\nkeyfile %s\nlog_dest file %s\n",
		port, user, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), filepath.Join(dir, "mosquitto.log"))
	must(t, os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o600))
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "mosquitto.conf"))
	must(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "mosquitto.log"))
			t.Fatalf("mosquitto with TLS did not start: %s", log)
		}
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	must(t, err)
	pool.AppendCertsFromPEM(caPEM)
	return "ssl://127.0.0.1:" + port, pool
}

// TestTLS: a sink and a source reach a broker over TLS, trusting its CA,
// with each protocol; a client that does not trust it cannot connect.
func TestTLS(t *testing.T) {
	url, pool := startTLSBroker(t)
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			topic := uniqueTopic("tls")
			o := Options{URL: url, ClientID: "tls-" + randomID(), Protocol: protocol, TLS: cfg, ConnectTimeout: 3 * time.Second}
			var mu sync.Mutex
			var got []int64
			g := pipeline.New(pipeline.Options{})
			src, err := NewSource(context.Background(), g, SourceOptions{Options: o, Topic: topic, QoS: 1,
				Source: bus.SourceOptions{Name: "src"}, Reconnect: bus.Reconnect{FailFast: true}})
			must(t, err)
			must(t, g.AddSource("src", src, bus.Ports()...))
			must(t, g.AddProcessor("work", pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
				mu.Lock()
				defer mu.Unlock()
				for _, ev := range b {
					got = append(got, gjson.GetBytes(ev.Data, "i").Int())
				}
				return nil
			})))
			must(t, g.Link("src", pipeline.PortOut, "work"))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- g.Run(ctx) }()

			so := o
			so.ClientID = "tls-sink-" + randomID()
			sink, err := NewSink(context.Background(), SinkOptions{Options: so, Topic: topic, QoS: 1, Reconnect: &bus.Reconnect{FailFast: true}})
			must(t, err)
			const n = 20
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				var evs []pipeline.Event
				for i := range n {
					evs = append(evs, pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i))})
				}
				must(t, sink.Process(context.Background(), evs, emitFunc(func(_ string, ev pipeline.Event) { t.Fatalf("publish: %s", ev.Meta) })))
				mu.Lock()
				k := len(got)
				mu.Unlock()
				if k >= n || time.Now().After(deadline) {
					break
				}
			}
			must(t, sink.Close(context.Background()))
			cancel()
			must(t, <-done)
			mu.Lock()
			defer mu.Unlock()
			if len(got) < n {
				t.Errorf("%d messages over TLS, want at least %d", len(got), n)
			}

			untrusted := o
			untrusted.TLS, untrusted.ClientID = &tls.Config{MinVersion: tls.VersionTLS12}, "tls-untrusted-"+randomID()
			_, err = NewSink(context.Background(), SinkOptions{Options: untrusted, Topic: topic, QoS: 1, Reconnect: &bus.Reconnect{FailFast: true}})
			if err == nil {
				t.Error("connected to a broker whose certificate is not trusted")
			}
		})
	}
}
