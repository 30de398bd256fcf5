package nats

import (
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
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and its key.
func writeCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ripple test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestTLSAndPassword: a server that requires TLS and a user/password is
// reached with tls:// (or ?tls=true), tls_ca and the URL's credentials; a
// plain connection and a wrong password fail with errors that do not show
// the password.
func TestTLSAndPassword(t *testing.T) {
	cert, key := writeCert(t)
	port := freePort(t)
	srv := startServer(t, port, jsConf(t, port, fmt.Sprintf("tls { cert_file: %q, key_file: %q }\nauthorization { user: ripple, password: s3cret }\n", cert, key)))
	addr := fmt.Sprintf("127.0.0.1:%d", srv.port)
	for _, u := range []string{
		"tls://ripple:s3cret@" + addr + "/tlsa?tls_ca=" + cert,
		"nats://ripple:s3cret@" + addr + "/tlsb?tls=true&tls_ca=" + cert,
	} {
		d, err := Open(bg, u, transport.Config{})
		if err != nil {
			t.Fatalf("Open(%s): %v", u, err)
		}
		m := &transport.Message{ID: "tls-1", Type: "tls.checked", Time: time.Now(), Attrs: map[string]string{"source": "s"}}
		if err := d.Publish(bg, []*transport.Message{m}); err != nil {
			t.Errorf("Publish over TLS: %v", err)
		}
		_ = d.Close()
	}
	for _, bad := range []string{
		"nats://ripple:s3cret@" + addr + "/plain?timeout=2s",
		"tls://ripple:wrongpw@" + addr + "/wrong?timeout=2s&tls_ca=" + cert,
	} {
		_, err := Open(bg, bad, transport.Config{})
		if err == nil {
			t.Errorf("Open(%s) succeeded, want an error", bad)
			continue
		}
		if strings.Contains(bad, "plain") && !strings.Contains(err.Error(), "tls_ca") {
			t.Errorf("the error for an unverified certificate does not point at tls_ca: %v", err)
		}
		if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "wrongpw") {
			t.Errorf("error shows the password: %v", err)
		}
		t.Logf("%s: %v", bad, err)
	}
}
