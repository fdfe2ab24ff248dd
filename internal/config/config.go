// Package config loads Respite's YAML configuration file.
//
// Unknown fields and invalid values are errors naming the file, line and
// field. ${VAR} and $VAR in the file expand from the environment before
// parsing.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
)

// Config is the whole file. Durations are YAML strings in Go syntax
// ("500ms", "30s", "1h").
type Config struct {
	// Listen is the RESP listener address (default 127.0.0.1:6380).
	Listen string `yaml:"listen"`
	// RequirePass, when set, makes clients AUTH before any other command,
	// like Redis' requirepass. It is never sent upstream.
	RequirePass string `yaml:"requirepass"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string   `yaml:"log_level"`
	Upstream Upstream `yaml:"upstream"`
	Limits   Limits   `yaml:"limits"`
}

// Upstream is the Redis server every unrouted key goes to.
type Upstream struct {
	// Addr is host:port of the upstream Redis (default 127.0.0.1:6379).
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// DB is the database index clients start in (default 0).
	DB int `yaml:"db"`
	// PoolSize bounds the shared upstream connections per RESP protocol
	// version (default 64). Pinned sessions use connections of their own.
	PoolSize int `yaml:"pool_size"`
	// Multiplexer picks how the shared path reaches Redis: "builtin" (the
	// default: mux_conns pipelined connections, twemproxy's design) or
	// "go-redis" (go-redis' AutoPipeliner over pool_size connections).
	Multiplexer string `yaml:"multiplexer"`
	// MuxConns is the number of multiplexed connections per RESP version
	// on the builtin path (default 2).
	MuxConns int `yaml:"mux_conns"`
	// DialTimeout bounds connecting to the upstream (default 5s).
	DialTimeout Duration `yaml:"dial_timeout"`
	// Timeout bounds one non-blocking command's round trip (default 10s).
	Timeout Duration `yaml:"timeout"`
}

// Limits bound what one client may send or hold; 0 means the default.
type Limits struct {
	// MaxClients is the number of simultaneous client connections (default
	// 10000, Redis' maxclients). Past it a new client gets
	// "-ERR max number of clients reached" and is closed.
	MaxClients int `yaml:"max_clients"`
	// MaxBulkBytes is the largest bulk string in a request, in bytes
	// (default 536870912 = 512 MiB, Redis' proto-max-bulk-len).
	MaxBulkBytes int64 `yaml:"max_bulk_bytes"`
	// MaxArgs is the most arguments in one command (default 1048576).
	MaxArgs int `yaml:"max_args"`
	// MaxInlineBytes is the longest inline (non-RESP) command line, in bytes
	// (default 65536, Redis' PROTO_INLINE_MAX_SIZE).
	MaxInlineBytes int `yaml:"max_inline_bytes"`
}

// Duration is a time.Duration written as a Go duration string in YAML.
type Duration time.Duration

// UnmarshalYAML parses "1.5s", "200ms", "1h".
func (d *Duration) UnmarshalYAML(b []byte) error {
	s := strings.Trim(strings.TrimSpace(string(b)), `"'`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (use Go syntax such as 500ms, 30s, 1h)", s)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// Default returns the configuration used when the file leaves a field out.
func Default() Config {
	return Config{
		Listen:   "127.0.0.1:6380",
		LogLevel: "info",
		Upstream: Upstream{
			Addr:        "127.0.0.1:6379",
			PoolSize:    64,
			Multiplexer: "builtin",
			MuxConns:    2,
			DialTimeout: Duration(5 * time.Second),
			Timeout:     Duration(10 * time.Second),
		},
		Limits: Limits{
			MaxClients:     10000,
			MaxBulkBytes:   512 << 20,
			MaxArgs:        1 << 20,
			MaxInlineBytes: 64 << 10,
		},
	}
}

// Load reads and validates the file at path. Errors name the file and, for
// syntax and type errors, the line and field.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	return Parse(path, data)
}

// Parse is Load on bytes already read; name is used in error messages.
func Parse(name string, data []byte) (Config, error) {
	cfg := Default()
	expanded := os.Expand(string(data), os.Getenv)
	if strings.TrimSpace(expanded) != "" {
		dec := yaml.NewDecoder(bytes.NewReader([]byte(expanded)), yaml.DisallowUnknownField())
		if err := dec.Decode(&cfg); err != nil {
			return Config{}, fmt.Errorf("%s: %s", name, yaml.FormatError(err, false, true))
		}
	}
	if err := cfg.validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}
	return cfg, nil
}

func (c *Config) validate() error {
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.Listen == "" {
		return errors.New("listen: must not be empty")
	}
	if c.Upstream.Addr == "" {
		return errors.New("upstream.addr: must not be empty")
	}
	if c.Upstream.DB < 0 {
		return fmt.Errorf("upstream.db: %d must not be negative", c.Upstream.DB)
	}
	if c.Upstream.PoolSize <= 0 {
		return fmt.Errorf("upstream.pool_size: %d must be positive", c.Upstream.PoolSize)
	}
	if c.Upstream.Multiplexer != "builtin" && c.Upstream.Multiplexer != "go-redis" {
		return fmt.Errorf("upstream.multiplexer: %q is not builtin or go-redis", c.Upstream.Multiplexer)
	}
	if c.Upstream.MuxConns <= 0 {
		return fmt.Errorf("upstream.mux_conns: %d must be positive", c.Upstream.MuxConns)
	}
	l := c.Limits
	if l.MaxClients <= 0 || l.MaxBulkBytes <= 0 || l.MaxArgs <= 0 || l.MaxInlineBytes <= 0 {
		return errors.New("limits: max_clients, max_bulk_bytes, max_args and max_inline_bytes must be positive")
	}
	return nil
}
