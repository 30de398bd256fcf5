package kafka

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ripplehq/ripple"
)

// selfSigned returns a TLS certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "kfake"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTLS: tls=true connects over TLS and checks the certificate (a
// self-signed one is refused), skip_verify=true accepts it.
func TestTLS(t *testing.T) {
	if cluster == nil {
		t.Skip("uses its own kfake cluster with TLS (RIPPLE_TEST_KAFKA_URL is set)")
	}
	c, err := startCluster(kfake.TLS(&tls.Config{Certificates: []tls.Certificate{selfSigned(t)}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	hosts := strings.Join(c.ListenAddrs(), ",")

	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	if _, err := ripple.Open(ctx, "kafka://"+hosts+"?tls=true&dial_timeout=2s&namespace=tls"); err == nil {
		t.Error("Open trusted a self-signed certificate without skip_verify")
	}

	bus := openBus(t, "kafka://"+hosts+"?tls=true&skip_verify=true&namespace=tls")
	var h handled
	if err := bus.On("tls.event.sent", "tls.sink", h.record); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	ev, err := bus.Publish(bg, "tls.event.sent", 1)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the event to be handled over TLS", 20*time.Second, func() bool { return h.has([]string{ev.ID}) })
}
