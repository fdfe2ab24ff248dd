package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"

	"github.com/respite/respite/internal/config"
)

// listenerTLS loads the listener's certificate; nil without one.
func listenerTLS(c config.ListenerTLS) (*tls.Config, error) {
	if c.CertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// upstreamTLS is the client TLS configuration for the upstream Redis; nil
// when TLS is off.
func upstreamTLS(u config.Upstream) (*tls.Config, error) {
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
