package redis

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// envTLSChildURL makes the test binary a process that opens a rediss://
// URL with its certificate checked against SSL_CERT_FILE, publishes and
// receives one event, and prints "ok" (see TestTLS).
const envTLSChildURL = "RIPPLE_REDIS_TEST_TLS_CHILD_URL"

// tlsChild runs in the child process of TestTLS.
func tlsChild(u string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := Open(ctx, u, transport.Config{})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer d.Close()
	if err := roundTrip(ctx, d); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ok")
	return 0
}

// roundTrip publishes one event to a fresh subscription and receives it.
func roundTrip(ctx context.Context, d transport.Driver) error {
	s, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "tls-check", Pattern: "tls.checked", Lease: time.Minute})
	if err != nil {
		return err
	}
	defer s.Close()
	m := msg("tls.checked")
	if err := d.Publish(ctx, []*transport.Message{m}); err != nil {
		return err
	}
	ds, err := s.Receive(ctx, 1)
	if err != nil {
		return err
	}
	if len(ds) != 1 || ds[0].ID != m.ID {
		return fmt.Errorf("received %d deliveries, want the one published (%s)", len(ds), m.ID)
	}
	return s.Settle(ctx, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Complete}})
}

// TestTLS runs the transport against a redis-server that accepts only
// TLS: a certificate from an unknown authority is refused with an error
// that says what to do; the CA named by SSL_CERT_FILE is trusted;
// skip_verify=true connects without checking; and the wrong scheme on
// either side gets an error that names the right one.
func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, cert, key := writeTestCerts(t, dir)
	tlsPort := freePort(t)
	srv := startServer(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", cert, "--tls-key-file", key,
		"--tls-ca-cert-file", ca, "--tls-auth-clients", "no")
	ctx := context.Background()
	secure := fmt.Sprintf("rediss://127.0.0.1:%d/0?prefix=%s", tlsPort, testPrefix(t))

	_, err := Open(ctx, secure, transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "could not be verified") || !strings.Contains(err.Error(), "SSL_CERT_FILE") {
		t.Fatalf("Open with a certificate from an unknown CA = %v; want a verification error naming SSL_CERT_FILE", err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envTLSChildURL+"="+secure, "SSL_CERT_FILE="+ca)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("with SSL_CERT_FILE naming the CA: %v\n%s", err, out)
	}

	d := openURL(t, withParams(secure, "skip_verify", "true"), transport.Config{})
	if err := roundTrip(ctx, d); err != nil {
		t.Fatalf("skip_verify=true: %v", err)
	}

	plainToTLS := fmt.Sprintf("redis://127.0.0.1:%d/0?dial_timeout=2s&read_timeout=2s", tlsPort)
	if _, err := Open(ctx, plainToTLS, transport.Config{}); err == nil || !strings.Contains(err.Error(), "rediss://") {
		t.Errorf("redis:// to a TLS port = %v; want an error suggesting rediss://", err)
	}
	// Redis waits for the rest of what it takes for an inline command, so
	// the TLS handshake times out.
	tlsToPlain := fmt.Sprintf("rediss://127.0.0.1:%d/0?dial_timeout=300ms&read_timeout=300ms&max_retries=-1", srv.port)
	if _, err := Open(ctx, tlsToPlain, transport.Config{}); err == nil || !strings.Contains(err.Error(), "does that port serve TLS") {
		t.Errorf("rediss:// to a plain port = %v; want an error asking whether the port serves TLS", err)
	}
	// A plain-text server that answers at once fails the handshake instead.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("-ERR not a TLS server\r\n"))
			_ = c.Close()
		}
	}()
	chatty := fmt.Sprintf("rediss://%s/0?dial_timeout=300ms&max_retries=-1", l.Addr())
	if _, err := Open(ctx, chatty, transport.Config{}); err == nil || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Errorf("rediss:// to a plain-text server = %v; want an error saying it does not speak TLS", err)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeTestCerts writes a CA certificate and a server certificate for
// 127.0.0.1 signed by it, as PEM files in dir.
func writeTestCerts(t testing.TB, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Ripple test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}
