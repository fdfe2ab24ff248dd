package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// testPKI writes a test CA and a certificate for 127.0.0.1 signed by it;
// it returns the CA pool and the PEM file paths.
func testPKI(t *testing.T) (pool *x509.CertPool, caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "respite test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o644)
		return p
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return pool, write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "EC PRIVATE KEY", keyDER)
}

// TLS on the listener: go-redis with the test CA connects; plain TCP to the
// TLS port fails cleanly and the proxy keeps serving.
func TestListenerTLS(t *testing.T) {
	pool, _, cert, key := testPKI(t)
	proxy := startProxy(t, func(c *config.Config) { c.TLS = config.ListenerTLS{CertFile: cert, KeyFile: key} })
	ctx := context.Background()
	g := newGoRedis(t, proxy, func(o *redis.Options) { o.TLSConfig = &tls.Config{RootCAs: pool} })
	if err := g.Set(ctx, "tls-k", "v", 0).Err(); err != nil {
		t.Fatalf("go-redis over TLS: %v", err)
	}
	plain := dialRaw(t, proxy)
	plain.send(encode("PING"))
	plain.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := plain.br.ReadByte(); err == nil && b == '+' {
		t.Fatal("plain TCP got a RESP reply from the TLS port")
	}
	if v, err := g.Get(ctx, "tls-k").Result(); err != nil || v != "v" {
		t.Fatalf("after a plain-TCP attempt: %q %v", v, err)
	}
	untrusted := newGoRedis(t, proxy, func(o *redis.Options) { o.TLSConfig = &tls.Config{}; o.MaxRetries = -1 })
	if err := untrusted.Ping(ctx).Err(); err == nil {
		t.Fatal("a client that does not trust the test CA connected")
	}
}

// TLS to the upstream Redis, for the shared path and pinned sessions.
func TestUpstreamTLS(t *testing.T) {
	pool, caFile, cert, key := testPKI(t)
	_ = pool
	tlsPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r, err := testenv.StartRedis("--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", cert, "--tls-key-file", key,
		"--tls-ca-cert-file", caFile, "--tls-auth-clients", "no")
	if err != nil {
		t.Fatalf("redis-server with TLS: %v", err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) {
		c.Upstream.Addr = "127.0.0.1:" + strconv.Itoa(tlsPort)
		c.Upstream.TLS = config.UpstreamTLS{Enabled: true, CAFile: caFile}
	})
	c := dialRaw(t, proxy)
	if got := c.do("SET", "up-tls", "1"); got != "+OK\r\n" {
		t.Fatalf("SET over upstream TLS: %q", got)
	}
	c.do("MULTI")
	c.do("INCR", "up-tls")
	if got := c.do("EXEC"); got != "*1\r\n:2\r\n" {
		t.Fatalf("pinned MULTI over upstream TLS: %q", got)
	}
	if got := dialRaw(t, r.Addr).do("GET", "up-tls"); got != "$1\r\n2\r\n" {
		t.Fatalf("value in Redis: %q", got)
	}
}
