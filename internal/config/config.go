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
	"net"
	"os"
	"slices"
	"strconv"
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
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json (default text); logs go to stderr.
	LogFormat string `yaml:"log_format"`
	// Admin is the HTTP admin listener (/metrics, /healthz, /readyz),
	// e.g. 127.0.0.1:9121; empty (the default) turns it off.
	Admin string `yaml:"admin"`
	// AdminPassword, when set, must be given with RESPITE AUTH before any
	// other RESPITE admin command on a connection.
	AdminPassword string `yaml:"admin_password"`
	// AdminCommands are server-administration commands (COMMAND flag
	// admin: CONFIG, ACL SETUSER/LIST/GETUSER, SHUTDOWN, DEBUG, MODULE,
	// REPLICAOF, SAVE, CLIENT KILL/PAUSE, MONITOR, ...) every client may run
	// although the proxy logs in to Redis with upstream.password: names as
	// Redis spells them, "slowlog" or "config|get" for one subcommand.
	// Without upstream.password all of them pass, as on Redis; with it,
	// only these, and any for a client with RESPITE AUTH rights or logged
	// in as an upstream user (AUTH user pass).
	AdminCommands []string `yaml:"admin_commands"`
	// TLS, when cert_file and key_file are set, makes the RESP listener
	// accept TLS connections only.
	TLS      ListenerTLS `yaml:"tls"`
	Upstream Upstream    `yaml:"upstream"`
	Limits   Limits      `yaml:"limits"`
	// Postgres is the database behind routes; required when Routes is set.
	Postgres Postgres `yaml:"postgres"`
	// Transactions tunes the optimistic-locking support.
	Transactions Transactions `yaml:"transactions"`
	// WriteBack tunes the write-back flusher shared by all write-back routes.
	WriteBack Queue `yaml:"write_back"`
	// ShutdownTimeout bounds a graceful shutdown (SIGTERM): in-flight
	// commands finish and write-back queues are flushed within it; what is
	// left stays in the durable queue (default 30s).
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// GOMAXPROCS, when > 0, caps the OS threads running Go code at once
	// (runtime.GOMAXPROCS); 0 (the default) chooses: 1 when the process
	// may use 2 CPUs or fewer, Go's choice (one per CPU) otherwise. 1
	// makes the proxy one event loop, the fastest setting when it shares
	// two or so cores with Redis or its clients (docs/BENCHMARKS.md). At
	// most MaxGOMAXPROCS.
	GOMAXPROCS int `yaml:"gomaxprocs"`
	// ClusterAnswers makes the proxy answer as a one-node Redis Cluster,
	// for clients that insist on cluster mode; off by default.
	ClusterAnswers ClusterAnswers `yaml:"cluster_answers"`
	// Routes put key prefixes under a caching policy backed by PostgreSQL.
	// A key belongs to the route with the longest matching prefix; keys
	// with no route pass through to the upstream unchanged.
	Routes []Route `yaml:"routes"`
}

// ClusterAnswers: CLUSTER SLOTS, SHARDS, NODES, INFO, MYID and KEYSLOT
// answered by the proxy as one node serving every slot at Advertise, and
// ASKING, READONLY and READWRITE answered +OK, so that cluster-aware
// clients (go-redis ClusterClient, redis-cli -c) can point at the proxy
// and send everything to it; they never see a redirect.
type ClusterAnswers struct {
	Enabled bool `yaml:"enabled"`
	// Advertise is the host:port clients are told to connect to (default:
	// listen).
	Advertise string `yaml:"advertise"`
}

// Transactions configures WATCH/MULTI/EXEC tracking.
type Transactions struct {
	// TrackedKeys bounds the keys whose conflict counts are kept (an LRU,
	// default 10000).
	TrackedKeys int `yaml:"tracked_keys"`
	// Gate orders WATCH sessions on hot keys.
	Gate Gate `yaml:"gate"`
	// AbortAttribute sends RESP3 clients the retry metadata as an
	// attribute (|) before the null of an EXEC aborted by WATCH. Off by
	// default: not every client parses attributes (redis-cli 7.0 drops the
	// connection); a connection can opt in with RESPITE ATTRIBUTES ON.
	AbortAttribute bool `yaml:"abort_attribute"`
	// IdleTimeout ends a WATCH or MULTI left open longer than this: the
	// proxy kills its upstream connection, logs it, and the client's EXEC
	// fails with a clear error (default 0: off).
	IdleTimeout Duration `yaml:"idle_timeout"`
}

// Gate is the contention gate: when a key's share of aborted EXECs over the
// last 10 s reaches Threshold (after MinAttempts attempts), new WATCH
// sessions on it wait in FIFO order behind the current one, at most
// MaxWait, then proceed anyway.
type Gate struct {
	Enabled     bool     `yaml:"enabled"`      // default false
	Threshold   Percent  `yaml:"threshold"`    // default 25%
	MinAttempts int      `yaml:"min_attempts"` // default 10
	MaxWait     Duration `yaml:"max_wait"`     // default 1s
}

// Queue configures the flusher of the write-back queues.
type Queue struct {
	// Consumer is this proxy's name in the queues' consumer group. Keep it
	// stable across restarts: a restarted proxy first flushes the entries
	// it had read but not acknowledged (default: the host name).
	Consumer string `yaml:"consumer"`
	// ClaimIdle is how long another consumer's unacknowledged entries must
	// be idle before this proxy takes them over (default 30s).
	ClaimIdle Duration `yaml:"claim_idle"`
	// AllowEvictingPolicy accepts, by name, an upstream maxmemory-policy
	// that can evict the write-back queues (allkeys-lru, allkeys-lfu,
	// allkeys-random), or "unverified": settings the proxy may not read
	// (CONFIG GET and INFO refused). Without it such an upstream refuses
	// write-back routes (docs/OPERATIONS.md, "Durability of write-back").
	AllowEvictingPolicy string `yaml:"allow_evicting_policy"`
	// RequireAOF refuses write-back routes unless the upstream Redis has
	// AOF on (appendonly yes).
	RequireAOF bool `yaml:"require_aof"`
	// MinReplicas is how many replicas must hold a write-back write's
	// queue entry before the client gets its reply: the script is followed
	// by WAIT MinReplicas ReplicaTimeout on its connection, and a write
	// fewer replicas acknowledged in time gets -NOREPLICAS instead of a
	// success (default 1 with upstream.mode sentinel, 0 otherwise: reply
	// once the primary ran the script). 0 turns it off.
	MinReplicas *int `yaml:"min_replicas"`
	// ReplicaTimeout bounds that WAIT (default 1s); below
	// upstream.timeout, within which its reply is read.
	ReplicaTimeout Duration `yaml:"replica_timeout"`
}

// Replicas is write_back.min_replicas for upstream mode: the value set,
// else its default (1 for sentinel, 0 for the others).
func (q Queue) Replicas(mode string) int {
	switch {
	case q.MinReplicas != nil:
		return *q.MinReplicas
	case mode == ModeSentinel:
		return 1
	}
	return 0
}

// WaitTimeout is write_back.replica_timeout, 1s when unset.
func (q Queue) WaitTimeout() time.Duration {
	if q.ReplicaTimeout == 0 {
		return time.Second
	}
	return time.Duration(q.ReplicaTimeout)
}

// EvictingPolicies are the Redis maxmemory policies that may evict keys
// without a TTL; write_back.allow_evicting_policy names one of them, or
// "unverified".
var EvictingPolicies = []string{"allkeys-lru", "allkeys-lfu", "allkeys-random"}

// Postgres configures the pgx pools.
type Postgres struct {
	// DSN is a PostgreSQL connection string (postgres://user@host:5432/db).
	DSN string `yaml:"dsn"`
	// MaxConns bounds connections for cache-miss loads and direct writes
	// (default 8).
	MaxConns int32 `yaml:"max_conns"`
	// FlushConns bounds connections for write-back flushes (default 2), a
	// separate budget so a flush storm cannot starve reads.
	FlushConns int32 `yaml:"flush_conns"`
	// StatementTimeout bounds every cache-miss load and every write,
	// write-back flushes included: PostgreSQL's statement_timeout on every
	// pooled connection, and the deadline of each operation (plus 1s for
	// the network). A load or write on a locked table fails after it
	// (default 5s; 0 means the default: it cannot be turned off).
	StatementTimeout Duration `yaml:"statement_timeout"`
	// Invalidation keeps the cached copies of routes with track_changes
	// coherent with writes that bypass the proxy (docs/OPERATIONS.md,
	// "Writes that bypass the proxy"). Off by default.
	Invalidation Invalidation `yaml:"invalidation"`
}

// The invalidation modes.
const (
	InvalidationOff     = "off"     // no change capture (the default)
	InvalidationLogical = "logical" // PostgreSQL logical replication (pgoutput, a persistent slot)
	InvalidationNotify  = "notify"  // LISTEN on a channel a trigger pg_notify()s
)

// Invalidation configures change capture from PostgreSQL.
type Invalidation struct {
	// Mode is off (the default), logical or notify.
	Mode string `yaml:"mode"`
	// Slot is the logical replication slot (default respite): one per
	// deployment, consumed by the instance holding the leader lease.
	Slot string `yaml:"slot"`
	// Publication is the publication of the tracked routes' tables
	// (default respite); the proxy creates it, or sets its tables.
	Publication string `yaml:"publication"`
	// Channel is the LISTEN channel of notify mode (default
	// respite_invalidate).
	Channel string `yaml:"channel"`
	// StatusInterval is how often the consumer reports its position to
	// PostgreSQL when idle, and how often the leader lease is renewed
	// (default 1s).
	StatusInterval Duration `yaml:"status_interval"`
	// MaxLag bounds how stale a tracked route's cached copy may be: while
	// no instance has applied the stream for longer than this (the
	// consumer down, PostgreSQL unreachable), reads of tracked routes
	// bypass the cache and go to PostgreSQL (default 10s).
	MaxLag Duration `yaml:"max_lag"`
	// Lease is the leader lease (SET NX PX in Redis) of the consumer; the
	// others take over within two leases after the leader died (default
	// 5s).
	Lease Duration `yaml:"lease"`
}

// Policy is a route's caching policy.
type Policy string

// The policies a route may name.
const (
	CacheAside   Policy = "cache-aside"
	WriteThrough Policy = "write-through"
	WriteBack    Policy = "write-back"
)

// Format is how a route presents a row to Redis clients.
type Format string

// The formats a route may name.
const (
	FormatJSON  Format = "json"  // the value is one JSON object of the row's columns
	FormatHash  Format = "hash"  // a Redis hash whose fields are the row's columns
	FormatValue Format = "value" // a string holding one column
)

// Route maps the keys under Prefix to rows of Table: the part of the key
// after the prefix is the value of KeyColumn, or with KeyColumns (a
// composite primary key) the values of those columns in that order,
// joined by KeySeparator (order:42:1001 is tenant_id 42, id 1001).
type Route struct {
	Name      string `yaml:"name"`
	Prefix    string `yaml:"prefix"`
	Policy    Policy `yaml:"policy"` // cache-aside | write-through | write-back
	Table     string `yaml:"table"`
	KeyColumn string `yaml:"key_column"`
	// KeyColumns replaces KeyColumn for a key of several columns;
	// KeySeparator (default ":") joins their values in the Redis key.
	KeyColumns   []string `yaml:"key_columns"`
	KeySeparator string   `yaml:"key_separator"`
	Format       Format   `yaml:"format"`       // json | hash | value
	ValueColumn  string   `yaml:"value_column"` // format value only
	// CacheVersion is part of the Redis key of every cached row of the
	// route (0, the default, adds nothing): bumping it makes every row
	// miss at once, without a FLUSH; the old version's copies expire
	// with their TTL.
	CacheVersion int `yaml:"cache_version"`
	// Audit logs one line per routed write (route, key, command,
	// outcome, duration) at level info; off by default.
	Audit bool `yaml:"audit"`
	// TTL of a cached row (default 1h); write-back keys stay cached until
	// flushed.
	TTL Duration `yaml:"ttl"`
	// TTLJitter spreads expiries by up to ± this fraction of TTL, written
	// as a percentage ("10%", the default), so keys loaded together do
	// not expire together.
	TTLJitter Percent `yaml:"ttl_jitter"`
	// NegativeTTL caches "no such row" for this long (default 30s; "0s"
	// turns negative caching off).
	NegativeTTL *Duration `yaml:"negative_ttl"`
	// Sliding renews a key's TTL on every hit.
	Sliding bool `yaml:"sliding"`
	// EarlyRefresh reloads hot keys in the background shortly before they
	// expire (XFetch, with EarlyRefreshBeta, default 1).
	EarlyRefresh     bool    `yaml:"early_refresh"`
	EarlyRefreshBeta float64 `yaml:"early_refresh_beta"`
	// DistributedLock makes concurrent misses on one key load it once
	// across all proxy instances (a SET NX PX lease of LockTTL, default 5s).
	DistributedLock bool     `yaml:"distributed_lock"`
	LockTTL         Duration `yaml:"lock_ttl"`
	// ContentionGate overrides transactions.gate.enabled for this route's
	// keys (true or false; unset follows the global switch).
	ContentionGate *bool `yaml:"contention_gate"`
	// LocalCache adds an in-process LRU tier in front of Redis.
	LocalCache *LocalCache `yaml:"local_cache"`
	// Write-back: entries per flush statement (default 100), time between
	// flushes (default 1s), attempts before an entry goes to the
	// dead-letter queue (default 5), and high or low (default) priority.
	BatchSize     int      `yaml:"batch_size"`
	FlushInterval Duration `yaml:"flush_interval"`
	MaxRetries    int      `yaml:"max_retries"`
	Priority      string   `yaml:"priority"`
	// TrackChanges opts the route in to postgres.invalidation: writes to
	// its table that bypass the proxy invalidate its cached copies.
	TrackChanges bool `yaml:"track_changes"`
}

// Keys is the route's key columns, in the order their values appear in
// the key: KeyColumns, or KeyColumn alone.
func (r Route) Keys() []string {
	if len(r.KeyColumns) > 0 {
		return r.KeyColumns
	}
	return []string{r.KeyColumn}
}

// LocalCache sizes the in-process tier.
type LocalCache struct {
	Size int      `yaml:"size"` // entries (default 10000)
	TTL  Duration `yaml:"ttl"`  // longest life of an entry (default 1s)
}

// Percent is a fraction written as "10%" (or a plain number of percent).
type Percent float64

// UnmarshalYAML parses "10%" as 0.10.
func (p *Percent) UnmarshalYAML(b []byte) error {
	v, msg := parsePercent(unquote(b))
	if msg != "" {
		return errors.New(msg)
	}
	*p = v
	return nil
}

// unquote is a scalar's text as the decoder hands it to UnmarshalYAML.
func unquote(b []byte) string {
	return strings.TrimSpace(strings.Trim(strings.TrimSpace(string(b)), `"'`))
}

// Upstream is the Redis server every unrouted key goes to.
type Upstream struct {
	// Mode is how the upstream is found: "standalone" (the default: one
	// Redis at Addr), "sentinel" (the primary Sentinel names MasterName,
	// asked at the sentinels Addrs and followed on failover) or "cluster"
	// (a Redis Cluster, its topology read from the seed nodes Addrs).
	Mode string `yaml:"mode"`
	// Addrs are host:port of the sentinels (mode sentinel) or of the
	// cluster's seed nodes (mode cluster); only for those modes.
	Addrs []string `yaml:"addrs"`
	// MasterName is the name Sentinel monitors the primary by; required
	// for mode sentinel, only for it.
	MasterName string `yaml:"master_name"`
	// Addr is host:port of the upstream Redis (default 127.0.0.1:6379);
	// mode standalone only.
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// ClientUser and ClientPassword name an ACL user the operator made for
	// the connections that carry clients' commands while routes are
	// configured: every key but respite:*. Empty: the proxy creates its
	// own (respite-client) with ACL SETUSER as Username.
	ClientUser     string `yaml:"client_user"`
	ClientPassword string `yaml:"client_password"`
	// DB is the database index clients start in (default 0).
	DB int `yaml:"db"`
	// PoolSize bounds the shared upstream connections per RESP protocol
	// version (default 64). Pinned sessions use connections of their own.
	PoolSize int `yaml:"pool_size"`
	// Multiplexer names how the shared path reaches Redis: "builtin" (the
	// default and the only one: mux_conns pipelined connections,
	// twemproxy's design). "go-redis" (go-redis' AutoPipeliner, kept for a
	// while to compare the two) is still accepted, with a warning at
	// start-up, and runs the builtin multiplexer.
	Multiplexer string `yaml:"multiplexer"`
	// MuxConns is the number of multiplexed connections per RESP version
	// on the builtin path; 0 (the default) means one per GOMAXPROCS, at
	// most 16.
	MuxConns int `yaml:"mux_conns"`
	// TLS connects to the upstream Redis over TLS.
	TLS UpstreamTLS `yaml:"tls"`
	// DialTimeout bounds connecting to the upstream (default 5s).
	DialTimeout Duration `yaml:"dial_timeout"`
	// Timeout bounds one non-blocking command's round trip (default 10s).
	Timeout Duration `yaml:"timeout"`
}

// ListenerTLS is the listener's certificate (PEM files).
type ListenerTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// UpstreamTLS configures TLS to the upstream Redis.
type UpstreamTLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of CAs to trust (default: the system's).
	CAFile string `yaml:"ca_file"`
	// ServerName overrides the name checked in the server's certificate
	// (default: the host of upstream.addr).
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
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
	// MaxOutputBytes bounds the replies the proxy holds for one client
	// that does not read them (default 0: no limit, as Redis' normal
	// class). A client past it is closed, as Redis'
	// client-output-buffer-limit closes one, and logged. Replies stream
	// to a client that reads, however large; without a limit, what the
	// proxy holds for a client that does not read is still bounded by its
	// pipeline window (about 16 replies).
	MaxOutputBytes int64 `yaml:"max_output_bytes"`
	// MaxQueryBytesTotal bounds the bytes of incomplete commands held for
	// all clients together (default 1073741824 = 1 GiB; 0: no limit). A
	// client whose command would pass it is closed (Redis'
	// maxmemory-clients evicts clients the same way).
	MaxQueryBytesTotal int64 `yaml:"max_query_bytes_total"`
	// ClientTimeout closes a client that completes no command for this
	// long (Redis' timeout; default 0: never). As in Redis, clients
	// subscribed, in MONITOR or blocked in a command are not closed; unlike
	// Redis, bytes of a command that never completes (a client sending one
	// byte a second) do not keep a client alive.
	ClientTimeout Duration `yaml:"client_timeout"`
}

// Duration is a time.Duration written as a Go duration string in YAML.
type Duration time.Duration

// UnmarshalYAML parses "1.5s", "200ms", "1h". A number without a unit
// ("60") is refused: seconds, milliseconds or minutes would each be a
// plausible reading.
func (d *Duration) UnmarshalYAML(b []byte) error {
	v, msg := parseDuration(unquote(b))
	if msg != "" {
		return errors.New(msg)
	}
	*d = v
	return nil
}

// Upper bounds of gomaxprocs and upstream.mux_conns: far above any useful
// value, low enough that a typo cannot make the runtime start tens of
// thousands of Ps (and GC workers) or the proxy thousands of connections.
const (
	MaxGOMAXPROCS = 1024
	MaxMuxConns   = 256
)

// Default returns the configuration used when the file leaves a field out.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:6380",
		LogLevel:        "info",
		LogFormat:       "text",
		Transactions:    Transactions{TrackedKeys: 10000, Gate: Gate{Threshold: 0.25, MinAttempts: 10, MaxWait: Duration(time.Second)}},
		ShutdownTimeout: Duration(30 * time.Second),
		Upstream: Upstream{
			Mode:        ModeStandalone,
			Addr:        "127.0.0.1:6379",
			PoolSize:    64,
			Multiplexer: "builtin",
			DialTimeout: Duration(5 * time.Second),
			Timeout:     Duration(10 * time.Second),
		},
		Limits: Limits{
			MaxClients:         10000,
			MaxBulkBytes:       512 << 20,
			MaxArgs:            1 << 20,
			MaxInlineBytes:     64 << 10,
			MaxQueryBytesTotal: 1 << 30,
		},
	}
}

// Load reads and validates the file at path. Every error names the file,
// the line and the field, as
//
//	config.yaml:41: routes[0].ttl: 60 has no unit (add one, e.g. 60s)
//
// overrides ("section.field=value", the proxy's -set) win over the file;
// see Parse.
func Load(path string, overrides ...string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	return Parse(path, data, overrides...)
}

// Parse is Load on bytes already read; name is used in error messages.
// overrides are settings that win over the file's: "section.field=value"
// with a YAML value, e.g. upstream.addr=127.0.0.1:6390, or
// upstream.password="" for an empty password (the proxy's -set, applied
// again on every reload). They are checked like the file, and an error
// they cause names them.
func Parse(name string, data []byte, overrides ...string) (Config, error) {
	cfg := Default()
	expanded := []byte(os.Expand(string(data), os.Getenv))
	lines := fileLines{}
	if strings.TrimSpace(string(expanded)) != "" {
		var err *fieldError
		if lines, err = check(expanded); err != nil {
			return Config{}, err.in(name)
		}
		// check has refused what the decoder would; this is a backstop.
		// check refuses a key set twice; the decoder's own check would
		// also refuse a key that overrides one merged in with <<: *anchor
		// (docs/UPSTREAM-BUGS.md).
		dec := yaml.NewDecoder(bytes.NewReader(expanded), yaml.DisallowUnknownField(), yaml.AllowDuplicateMapKey())
		if err := dec.Decode(&cfg); err != nil {
			return Config{}, decodeError(err).in(name)
		}
	}
	for _, o := range overrides {
		if err := cfg.override(o); err != nil {
			return Config{}, err
		}
	}
	if err := cfg.validate(); err != nil {
		for _, o := range overrides {
			if path, _, _ := strings.Cut(o, "="); err.path == path || strings.HasPrefix(err.path, path+".") {
				return Config{}, err.in("-set " + o)
			}
		}
		lines.locate(err)
		return Config{}, err.in(name)
	}
	return cfg, nil
}

// override applies one override ("section.field=value") to c; it is
// checked like the file.
func (c *Config) override(o string) error {
	name := "-set " + o
	path, value, ok := strings.Cut(o, "=")
	if !ok || path == "" || strings.ContainsAny(path, "[] ") || strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("%s: not field=value (a field of the file by its path, e.g. upstream.addr=127.0.0.1:6390)", name)
	}
	var doc strings.Builder
	keys := strings.Split(path, ".")
	for i, k := range keys {
		doc.WriteString(strings.Repeat("  ", i) + k + ":")
		if i < len(keys)-1 {
			doc.WriteString("\n")
		}
	}
	doc.WriteString(" " + value + "\n")
	if _, err := check([]byte(doc.String())); err != nil {
		err.line = 0
		return err.in(name)
	}
	dec := yaml.NewDecoder(strings.NewReader(doc.String()), yaml.DisallowUnknownField())
	if err := dec.Decode(c); err != nil {
		return decodeError(err).in(name)
	}
	return nil
}

func (c *Config) validate() *fieldError {
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log_level", "%q is not a log level (debug, info, warn or error)", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return bad("log_format", "%q is not a log format (text or json)", c.LogFormat)
	}
	if c.GOMAXPROCS < 0 || c.GOMAXPROCS > MaxGOMAXPROCS {
		return bad("gomaxprocs", "%d is out of range (0, Go's default, to %d)", c.GOMAXPROCS, MaxGOMAXPROCS)
	}
	if c.Listen == "" {
		return bad("listen", "empty (an address such as 127.0.0.1:6380)")
	}
	if _, port, err := net.SplitHostPort(c.Admin); c.Admin != "" && err == nil && !hostPort(c.Admin) {
		return bad("admin", "%q: port %q is not a number from 0 to 65535", c.Admin, port)
	}
	if c.Admin != "" && !hostPort(c.Admin) {
		return bad("admin", "%q is not host:port (an address such as 127.0.0.1:9121, or leave it out to turn the admin listener off)", c.Admin)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		missing, given := "tls.key_file", "tls.cert_file"
		if c.TLS.CertFile == "" {
			missing, given = given, missing
		}
		e := bad(missing, "missing (cert_file and key_file go together)")
		e.near = given
		return e
	}
	if e := c.validateMode(); e != nil {
		return e
	}
	if a := c.ClusterAnswers.Advertise; a != "" {
		if _, port, ok := strings.Cut(a, ":"); !ok || port == "" || strings.HasPrefix(a, ":") {
			return bad("cluster_answers.advertise", "%q is not host:port (the address clients are told to connect to)", a)
		}
	}
	if c.Upstream.DB < 0 {
		return bad("upstream.db", "%d is negative (0 or more)", c.Upstream.DB)
	}
	if c.Upstream.PoolSize <= 0 {
		return bad("upstream.pool_size", "%d is not positive (1 or more, default 64)", c.Upstream.PoolSize)
	}
	if c.Upstream.Multiplexer != "builtin" && c.Upstream.Multiplexer != "go-redis" {
		return bad("upstream.multiplexer", "%q is not a multiplexer (builtin or go-redis)", c.Upstream.Multiplexer)
	}
	if c.Upstream.MuxConns < 0 || c.Upstream.MuxConns > MaxMuxConns {
		return bad("upstream.mux_conns", "%d is out of range (0, one per gomaxprocs, to %d)", c.Upstream.MuxConns, MaxMuxConns)
	}
	for _, f := range []struct {
		path string
		v    int64
	}{
		{"transactions.tracked_keys", int64(c.Transactions.TrackedKeys)},
		{"transactions.gate.min_attempts", int64(c.Transactions.Gate.MinAttempts)},
		{"transactions.gate.max_wait", int64(c.Transactions.Gate.MaxWait)},
		{"limits.max_clients", int64(c.Limits.MaxClients)},
		{"limits.max_bulk_bytes", c.Limits.MaxBulkBytes},
		{"limits.max_args", int64(c.Limits.MaxArgs)},
		{"limits.max_inline_bytes", int64(c.Limits.MaxInlineBytes)},
	} {
		if f.v <= 0 {
			return bad(f.path, "must be positive (leave it out for the default)")
		}
	}
	for _, f := range []struct {
		path string
		v    int64
	}{
		{"limits.max_output_bytes", c.Limits.MaxOutputBytes},
		{"limits.max_query_bytes_total", c.Limits.MaxQueryBytesTotal},
		{"limits.client_timeout", int64(c.Limits.ClientTimeout)},
	} {
		if f.v < 0 {
			return bad(f.path, "must not be negative (0 turns the limit off)")
		}
	}
	return c.validateRoutes()
}

// Upstream modes (upstream.mode).
const (
	ModeStandalone = "standalone"
	ModeSentinel   = "sentinel"
	ModeCluster    = "cluster"
)

// validateMode checks upstream.mode and the fields that go with it.
func (c *Config) validateMode() *fieldError {
	u := &c.Upstream
	if u.ClientPassword != "" && u.ClientUser == "" {
		return bad("upstream.client_password", "set without upstream.client_user (the ACL user it is the password of)")
	}
	switch u.Mode {
	case ModeStandalone:
		if u.Addr == "" {
			return bad("upstream.addr", "empty (host:port of the Redis, e.g. 127.0.0.1:6379)")
		}
		if len(u.Addrs) > 0 {
			return bad("upstream.addrs", "only for mode sentinel or cluster (standalone uses upstream.addr)")
		}
		if u.MasterName != "" {
			return bad("upstream.master_name", "only for mode sentinel")
		}
		return nil
	case ModeSentinel, ModeCluster:
	default:
		return bad("upstream.mode", "%q is not a mode (standalone, sentinel or cluster)", u.Mode)
	}
	what := "the sentinels"
	if u.Mode == ModeCluster {
		what = "the cluster's seed nodes"
	}
	if len(u.Addrs) == 0 {
		e := bad("upstream.addrs", "required for mode %s (%s, host:port each)", u.Mode, what)
		e.near = "upstream.mode"
		return e
	}
	for i, a := range u.Addrs {
		if _, port, ok := strings.Cut(a, ":"); !ok || port == "" || strings.HasPrefix(a, ":") {
			return bad(fmt.Sprintf("upstream.addrs[%d]", i), "%q is not host:port", a)
		}
	}
	if u.Mode == ModeSentinel {
		if u.MasterName == "" {
			e := bad("upstream.master_name", "required for mode sentinel (the name Sentinel monitors the primary by)")
			e.near = "upstream.mode"
			return e
		}
		return nil
	}
	if u.MasterName != "" {
		return bad("upstream.master_name", "only for mode sentinel")
	}
	if u.DB != 0 {
		return bad("upstream.db", "%d: Redis Cluster has only database 0", u.DB)
	}
	return nil
}

// validateClusterRoutes checks the routes for upstream.mode cluster,
// where each route's keys share one hash slot (policy/clusterkeys.go):
// names and prefixes without braces (they make the hash tag), and none
// of the features that need more than that slot's primary yet.
func (c *Config) validateClusterRoutes() *fieldError {
	if c.Upstream.Mode != ModeCluster {
		return nil
	}
	for i, r := range c.Routes {
		at := fmt.Sprintf("routes[%d].", i)
		switch {
		case strings.ContainsAny(r.Name, "{}"):
			return bad(at+"name", "%q holds a brace: with upstream.mode cluster a route's name makes the hash tag of its keys", r.Name)
		case strings.ContainsAny(r.Prefix, "{}"):
			return bad(at+"prefix", "%q holds a brace: with upstream.mode cluster the proxy puts a hash tag of its own right after the prefix", r.Prefix)
		case r.LocalCache != nil:
			return bad(at+"local_cache", "not supported with upstream.mode cluster yet (the in-process tier follows one Redis)")
		case r.TrackChanges:
			return bad(at+"track_changes", "not supported with upstream.mode cluster yet")
		}
	}
	if n := c.WriteBack.MinReplicas; n != nil && *n > 0 {
		return bad("write_back.min_replicas", "not supported with upstream.mode cluster yet (0 turns it off)")
	}
	return nil
}

// validateRoutes fills route defaults and checks every route; errors name
// the route by position (routes[1].ttl).
func (c *Config) validateRoutes() *fieldError {
	if len(c.Routes) == 0 {
		return c.validateInvalidation()
	}
	if c.Postgres.DSN == "" {
		e := bad("postgres.dsn", "required when routes are configured (a postgres:// URL)")
		e.near = "routes"
		return e
	}
	if c.WriteBack.Consumer == "" {
		c.WriteBack.Consumer, _ = os.Hostname()
	}
	if c.WriteBack.ClaimIdle == 0 {
		c.WriteBack.ClaimIdle = Duration(30 * time.Second)
	}
	if p := c.WriteBack.AllowEvictingPolicy; p != "" && p != "unverified" && !slices.Contains(EvictingPolicies, p) {
		hint := "a policy that evicts keys without TTL: " + strings.Join(EvictingPolicies, ", ") + ", or unverified"
		if strings.HasPrefix(p, "volatile-") || p == "noeviction" {
			hint = p + " cannot evict the queues and needs no opt-in: remove the field"
		}
		return bad("write_back.allow_evicting_policy", "%q is not accepted (%s)", p, hint)
	}
	if c.WriteBack.MinReplicas == nil {
		n := c.WriteBack.Replicas(c.Upstream.Mode)
		c.WriteBack.MinReplicas = &n
	}
	if n := *c.WriteBack.MinReplicas; n < 0 {
		return bad("write_back.min_replicas", "%d is negative (0 turns it off; default 1 with upstream.mode sentinel, else 0)", n)
	}
	c.WriteBack.ReplicaTimeout = Duration(c.WriteBack.WaitTimeout())
	if rt, ut := c.WriteBack.ReplicaTimeout, c.Upstream.Timeout; *c.WriteBack.MinReplicas > 0 && ut > 0 && rt >= ut {
		return bad("write_back.replica_timeout", "%v is not below upstream.timeout (%v), within which the WAIT's reply is read", time.Duration(rt), time.Duration(ut))
	}
	if rt := c.WriteBack.ReplicaTimeout; rt < Duration(time.Millisecond) {
		return bad("write_back.replica_timeout", "%v is below 1ms (WAIT counts milliseconds; default 1s)", time.Duration(rt))
	}
	if c.Postgres.MaxConns == 0 {
		c.Postgres.MaxConns = 8
	}
	if c.Postgres.FlushConns == 0 {
		c.Postgres.FlushConns = 2
	}
	if c.Postgres.StatementTimeout == 0 {
		c.Postgres.StatementTimeout = Duration(5 * time.Second)
	}
	if c.Postgres.StatementTimeout < Duration(time.Millisecond) {
		return bad("postgres.statement_timeout", "%v is below 1ms (PostgreSQL counts milliseconds; default 5s)", time.Duration(c.Postgres.StatementTimeout))
	}
	names, prefixes := map[string]int{}, map[string]int{}
	for i := range c.Routes {
		if err := c.Routes[i].validate(fmt.Sprintf("routes[%d]", i), i, names, prefixes); err != nil {
			return err
		}
	}
	if err := c.validateClusterRoutes(); err != nil {
		return err
	}
	return c.validateInvalidation()
}

// validate fills r's defaults and checks it; at is its path (routes[1]),
// names and prefixes the index of the routes before it by name and prefix.
func (r *Route) validate(at string, i int, names, prefixes map[string]int) *fieldError {
	fail := func(field, msg string, args ...any) *fieldError {
		return bad(at+"."+field, msg, args...)
	}
	switch {
	case r.Name == "":
		return fail("name", "required (a name for the route, unique in the file)")
	case names[r.Name] > 0:
		return fail("name", "%q is also the name of routes[%d] (names are unique)", r.Name, names[r.Name]-1)
	case r.Prefix == "":
		return fail("prefix", "required (the key prefix, e.g. \"user:\")")
	case prefixes[r.Prefix] > 0:
		return fail("prefix", "%q is also the prefix of routes[%d] (prefixes are unique)", r.Prefix, prefixes[r.Prefix]-1)
	case strings.HasPrefix(r.Prefix, "respite:") || strings.HasPrefix("respite:", r.Prefix):
		return fail("prefix", "%q overlaps respite:, the proxy's own keys (choose another prefix)", r.Prefix)
	case r.Table == "":
		return fail("table", "required (the PostgreSQL table of the rows)")
	case r.KeyColumn == "" && len(r.KeyColumns) == 0:
		return fail("key_column", "required (the column the part of the key after the prefix matches; key_columns for a key of several columns)")
	case r.KeyColumn != "" && len(r.KeyColumns) > 0:
		return fail("key_columns", "set key_column or key_columns, not both")
	}
	for j, c := range r.KeyColumns {
		if c == "" {
			return fail(fmt.Sprintf("key_columns[%d]", j), "empty (a column name)")
		}
		if k := slices.Index(r.KeyColumns, c); k < j {
			return fail(fmt.Sprintf("key_columns[%d]", j), "%q is also key_columns[%d] (each column once)", c, k)
		}
	}
	if len(r.KeyColumns) == 1 {
		r.KeyColumn, r.KeyColumns = r.KeyColumns[0], nil // one column: key_column
	}
	if r.KeySeparator == "" {
		r.KeySeparator = ":"
	}
	for _, ch := range r.KeySeparator {
		if ch < 0x21 || ch > 0x7e || ch == '\'' || ch == '\\' || ch == '%' || ch == '_' ||
			('0' <= ch && ch <= '9') || ('a' <= ch && ch <= 'z') || ('A' <= ch && ch <= 'Z') {
			return fail("key_separator", "%q is not accepted (punctuation such as : | / #, not letters, digits, spaces, quotes, backslash, %% or _)", r.KeySeparator)
		}
	}
	if r.CacheVersion < 0 {
		return fail("cache_version", "%d is negative (0, the default, or a version number to bump)", r.CacheVersion)
	}
	if r.CacheVersion != 0 && r.Policy == WriteBack {
		return fail("cache_version", "only for cache-aside and write-through routes (a write-back route's cache holds writes PostgreSQL does not have yet; drain it with RESPITE FLUSH and delete the keys instead)")
	}
	names[r.Name], prefixes[r.Prefix] = i+1, i+1
	switch r.Policy {
	case CacheAside, WriteThrough, WriteBack:
	default:
		return fail("policy", "%q is not a policy (cache-aside, write-through or write-back)", r.Policy)
	}
	switch r.Format {
	case FormatJSON, FormatHash:
		if r.ValueColumn != "" {
			return fail("value_column", "only for format value (remove it, or set format: value)")
		}
	case FormatValue:
		if r.ValueColumn == "" {
			e := fail("value_column", "required for format value (the column that holds the value)")
			e.near = at + ".format"
			return e
		}
	default:
		return fail("format", "%q is not a format (json, hash or value)", r.Format)
	}
	if r.TTL == 0 {
		r.TTL = Duration(time.Hour)
	}
	if r.TTLJitter == 0 {
		r.TTLJitter = 0.10
	}
	if r.NegativeTTL == nil {
		d := Duration(30 * time.Second)
		r.NegativeTTL = &d
	}
	if r.EarlyRefreshBeta == 0 {
		r.EarlyRefreshBeta = 1
	}
	if r.EarlyRefreshBeta < 0 {
		return fail("early_refresh_beta", "%g is negative (a positive number, default 1)", r.EarlyRefreshBeta)
	}
	if r.LockTTL == 0 {
		r.LockTTL = Duration(5 * time.Second)
	}
	if lc := r.LocalCache; lc != nil {
		if r.Format == FormatHash {
			return fail("local_cache", "only for json and value routes (remove it, or change format)")
		}
		if lc.Size == 0 {
			lc.Size = 10000
		}
		if lc.TTL == 0 {
			lc.TTL = Duration(time.Second)
		}
		if lc.Size < 0 {
			return fail("local_cache.size", "%d is negative (a number of entries, default 10000)", lc.Size)
		}
	}
	if r.BatchSize == 0 {
		r.BatchSize = 100
	}
	if r.FlushInterval == 0 {
		r.FlushInterval = Duration(time.Second)
	}
	if r.MaxRetries == 0 {
		r.MaxRetries = 5
	}
	if r.BatchSize < 0 {
		return fail("batch_size", "%d is negative (entries per flush, default 100)", r.BatchSize)
	}
	if r.MaxRetries < 0 {
		return fail("max_retries", "%d is negative (attempts, default 5)", r.MaxRetries)
	}
	switch r.Priority {
	case "":
		r.Priority = "low"
	case "low", "high":
	default:
		return fail("priority", "%q is not a priority (high or low)", r.Priority)
	}
	return nil
}

// hostPort reports whether a is an address a TCP listener takes: host:port
// (the host may be empty for every interface, [::1] for IPv6) with a port
// number from 0 to 65535.
func hostPort(a string) bool {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535 && port == strconv.Itoa(n)
}
