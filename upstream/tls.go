package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"

	"github.com/respite/respite/internal/config"
)

// clientTLS is the client TLS configuration for the upstream Redis; nil
// when TLS is off.
func clientTLS(u config.Upstream) (*tls.Config, error) {
	t := u.TLS
	if !t.Enabled {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(u.Addr)
		if err != nil {
			return nil, err
		}
		cfg.ServerName = host
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("upstream.tls.ca_file: no certificate found")
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
