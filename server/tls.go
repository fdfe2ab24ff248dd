package server

import (
	"crypto/tls"

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
