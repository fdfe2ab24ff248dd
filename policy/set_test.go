package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/router"
)

// MSET is all or nothing for everything the proxy can check first: a
// routed pair with an invalid value, a non-canonical key, a route that
// does not serve SET or an odd number of arguments fails the whole MSET
// before any part (plain or routed, PostgreSQL or Redis) is applied.
func TestMSETIsAllOrNothing(t *testing.T) {
	ctx := testCtx(t)
	users := uniqueName("users")
	pgExec(t, nil, "CREATE TABLE "+users+" (id int PRIMARY KEY, name text NOT NULL, age int)")
	wb := wbTable(t, nil)
	cfg := setConfig(t, nil, routeItem(users, users+":", "cache-aside", users, "id", "json", "")+
		routeItem(users+"h", users+"h:", "cache-aside", users, "id", "hash", "")+
		routeItem(wb, wb+":", "write-back", wb, "page_id", "value", "views"))
	s, err := openSet(t, cfg, testRedis.Addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := newRedisClient(t, testRedis.Addr, 2)
	plain := uniqueName("plain")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"MSET", plain, "p", users + ":1", `{"name":"Ada"}`, users + ":2", `{not json`}, "-ERR route '" + users + "': "},
		{[]string{"MSET", plain, "p", users + ":1", `{"name":"Ada"}`, users + ":3", `{"nickname":"x"}`}, "nickname"},
		{[]string{"MSET", plain, "p", wb + ":a", "7", wb + ":b", "-1x"}, "is not a valid bigint"},
		{[]string{"MSET", plain, "p", users + ":1", `{"name":"Ada"}`, users + ":01", `{"name":"Bob"}`}, `use "` + users + `:1"`},
		{[]string{"MSET", plain, "p", users + ":1", `{"name":"Ada"}`, users + ":x", `{"name":"Bob"}`}, `key "x" is not a valid integer`},
		{[]string{"MSET", plain, "p", users + "h:1", "v"}, "-ERR command 'SET' is not supported on route '" + users + "h'"},
		{[]string{"MSET", plain, "p", users + ":1", `{"name":"Ada"}`, "dangling"}, "-ERR wrong number of arguments for 'mset' command"},
	} {
		if got := setDo(ctx, s, tc.args...); !strings.Contains(got, tc.want) {
			t.Errorf("%v: %q, want %q", tc.args, got, tc.want)
		}
		if n := rc.Exists(ctx, plain).Val(); n != 0 {
			t.Fatalf("%v: the plain key was set", tc.args)
		}
		if n := pgQuery(t, nil, "SELECT count(*) FROM "+users); n != "0" {
			t.Fatalf("%v: %s rows written", tc.args, n)
		}
		if n := rc.Exists(ctx, wb+":a").Val(); n != 0 {
			t.Fatalf("%v: the write-back key was written", tc.args)
		}
	}
	if got := setDo(ctx, s, "MSET", plain, "p", users+":1", `{"name":"Ada"}`, wb+":a", "7"); got != "+OK\r\n" {
		t.Fatalf("valid MSET: %q", got)
	}
	if rc.Get(ctx, plain).Val() != "p" || pgQuery(t, nil, "SELECT name FROM "+users+" WHERE id = 1") != "Ada" || rc.Get(ctx, wb+":a").Val() != "7" {
		t.Fatal("a valid MSET did not apply every part")
	}
}

// Only the canonical text of a key is served, for every type the key
// column can have: a non-canonical spelling reads as absent and is
// refused for writes (directly, in MULTI), naming the canonical key; a
// WATCH on it caches nothing.
func TestNonCanonicalKeysOfEveryType(t *testing.T) {
	ctx := testCtx(t)
	var routes string
	var cases []struct{ table, good, bad, canonical string }
	for _, tc := range []struct{ typ, good, bad, canonical string }{
		{"date", "2024-01-31", "2024-1-31", "2024-01-31"},
		{"date", "2024-01-31", "Jan 31 2024", "2024-01-31"},
		{"numeric", "1.5", "1.50", "1.5"},
		{"numeric(10,2)", "1.50", "1.5", "1.50"},
		{"timestamptz", "2024-01-31 10:00:00+00", "2024-01-31T11:00:00+01", "2024-01-31 10:00:00+00"},
		{"timestamp", "2024-01-31 10:00:00.5", "2024-01-31 10:00:00.500", "2024-01-31 10:00:00.5"},
		{"uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"boolean", "true", "yes", "true"},
		{"bigint", "7", "+7", "7"},
		{"character(4)", "ab", "ab  ", "ab"},
	} {
		table := uniqueName("k")
		pgExec(t, nil, "CREATE TABLE "+table+" (k "+tc.typ+" PRIMARY KEY, v text)")
		pgExec(t, nil, "INSERT INTO "+table+" VALUES ('"+tc.good+"', 'row')")
		routes += routeItem(table, table+":", "write-through", table, "k", "value", "v")
		cases = append(cases, struct{ table, good, bad, canonical string }{table, tc.good, tc.bad, tc.canonical})
	}
	s, err := openSet(t, setConfig(t, nil, routes), testRedis.Addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := newRedisClient(t, testRedis.Addr, 2)
	for _, tc := range cases {
		good, bad := tc.table+":"+tc.good, tc.table+":"+tc.bad
		if got := setDo(ctx, s, "GET", bad); got != "$-1\r\n" {
			t.Errorf("GET %q: %q", bad, got)
		}
		if got := setDo(ctx, s, "MGET", bad, good); got != "*2\r\n$-1\r\n$3\r\nrow\r\n" {
			t.Errorf("MGET %q %q: %q", bad, good, got)
		}
		want := `use "` + tc.table + ":" + tc.canonical + `"`
		if got := setDo(ctx, s, "SET", bad, "new"); !strings.Contains(got, want) {
			t.Errorf("SET %q: %q, want %s", bad, got, want)
		}
		var cmd router.Command
		router.Classify(&cmd, [][]byte{[]byte("SET"), []byte(bad), []byte("new")}, s.Routes())
		if _, err := s.Queue(ctx, &cmd); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("SET %q in MULTI: %v", bad, err)
		}
		router.Classify(&cmd, [][]byte{[]byte("WATCH"), []byte(bad)}, s.Routes())
		if err := s.Ensure(ctx, &cmd); err != nil || rc.Exists(ctx, bad).Val() != 0 {
			t.Errorf("WATCH %q: %v, cached %d", bad, err, rc.Exists(ctx, bad).Val())
		}
		if got := setDo(ctx, s, "GET", good); got != "$3\r\nrow\r\n" {
			t.Errorf("GET %q: %q", good, got)
		}
		if v := pgQuery(t, nil, "SELECT v FROM "+tc.table); v != "row" {
			t.Errorf("%s: a refused write changed the row: %q", tc.table, v)
		}
	}
}

// The write-through intent protocol (writethrough.go), step by step: a
// fill loaded before a write began is refused after it; a write refused by
// PostgreSQL keeps the cached copy; an intent left by an earlier run of
// this instance is resolved at start-up (the cached copy invalidated), and
// one past its lease by the sweep.
func TestWriteThroughIntents(t *testing.T) {
	ctx := testCtx(t)
	table := uniqueName("wt")
	pgExec(t, nil, "CREATE TABLE "+table+" (k text PRIMARY KEY, v int CHECK (v >= 0))")
	pgExec(t, nil, "INSERT INTO "+table+" VALUES ('a', 1), ('b', 1), ('c', 1)")
	cfg := setConfig(t, nil, routeItem(table, table+":", "write-through", table, "k", "value", "v"))
	cfg.Postgres.StatementTimeout = config.Duration(500 * time.Millisecond) // intentMargin 2.5s
	s, err := openSet(t, cfg, testRedis.Addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := s.List()[0]
	rc := newRedisClient(t, testRedis.Addr, 2)
	key := table + ":a"
	// A stale fill: observed before a write, stored after it.
	g, err := r.observe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := r.loadRow(ctx, r.db.Pool(), key)
	if got := setDo(ctx, s, "SET", key, "5"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	rc.Del(ctx, key) // as if evicted: the stale fill would land
	if stored, err := r.runFill(ctx, r.guardedFillOp(key, old, false, g, nil)); err != nil || stored {
		t.Fatalf("a fill loaded before the write was stored: %v %v", stored, err)
	}
	if got := setDo(ctx, s, "GET", key); got != "$1\r\n5\r\n" || rc.Get(ctx, key).Val() != "5" {
		t.Fatalf("GET after the write: %q, cached %q", got, rc.Get(ctx, key).Val())
	}
	// Refused by PostgreSQL (CHECK): the cached copy stays.
	if got := setDo(ctx, s, "SET", key, "-1"); !strings.Contains(got, "check") || rc.Get(ctx, key).Val() != "5" {
		t.Fatalf("a refused write: %q, cached %q", got, rc.Get(ctx, key).Val())
	}
	// An earlier run of this instance died between its commit and its
	// cache update: the commit is in PostgreSQL, the cache is stale.
	dead := table + ":b"
	setDo(ctx, s, "GET", dead)
	token := r.instancePrefix() + "earlierboot/x"
	if err := wtBegin.Run(ctx, r.rdb, r.intentKeys(dead), token, r.intentLease().Milliseconds()).Err(); err != nil {
		t.Fatal(err)
	}
	pgExec(t, nil, "UPDATE "+table+" SET v = 9 WHERE k = 'b'")
	if n, err := r.ResolveIntents(ctx, false); err != nil || n != 0 {
		t.Fatalf("the sweep resolved a live intent: %d %v", n, err)
	}
	// The fence's PX starts inside ResolveIntents: measured from before
	// the call, the fence cannot end sooner than intentMargin after it.
	resolved := time.Now()
	if n, err := r.ResolveIntents(ctx, true); err != nil || n != 1 {
		t.Fatalf("start-up resolution: %d %v", n, err)
	}
	// Invalidated at once; fenced for intentMargin (the dead writer's
	// last statement may still commit): reads go to PostgreSQL.
	if got := setDo(ctx, s, "GET", dead); got != "$1\r\n9\r\n" || rc.Exists(ctx, dead).Val() != 0 {
		t.Fatalf("after resolving: GET %q, cached %q", got, rc.Get(ctx, dead).Val())
	}
	waitFor(t, r.intentMargin()+3*time.Second, "the fence to end", func() bool {
		return setDo(ctx, s, "GET", dead) == "$1\r\n9\r\n" && rc.Get(ctx, dead).Val() == "9"
	})
	if d := time.Since(resolved); d < r.intentMargin() {
		t.Fatalf("cached again %v after the resolution, before the fence (%v) ended", d, r.intentMargin())
	}
	// An intent of another instance, past its lease: the sweep resolves it.
	other := table + ":c"
	setDo(ctx, s, "GET", other)
	// A lease long enough to be live when start-up resolution runs on a
	// loaded machine (50 ms was not), short enough for the sweep below.
	if err := wtBegin.Run(ctx, r.rdb, r.intentKeys(other), "elsewhere/boot/x", 2000).Err(); err != nil {
		t.Fatal(err)
	}
	pgExec(t, nil, "UPDATE "+table+" SET v = 4 WHERE k = 'c'")
	if n, _ := r.ResolveIntents(ctx, true); n != 0 {
		t.Fatalf("start-up resolution took another instance's live intent: %d", n)
	}
	waitFor(t, 15*time.Second, "the sweep", func() bool { return rc.Exists(ctx, other).Val() == 0 })
	if got := setDo(ctx, s, "GET", other); got != "$1\r\n4\r\n" {
		t.Fatalf("after the sweep: %q", got)
	}
}

// A cache-aside fill that passed its generation check before a write, and
// stores only while the write deletes the cached copy, cannot leave the
// old row cached: the write waits for the fill's store, then deletes
// (loader.quiesce). Before, the write's delete ran first and the old row
// stayed cached for its TTL.
func TestWriteWaitsForAFillAlreadyStoring(t *testing.T) {
	ctx := testCtx(t)
	table := uniqueName("fb")
	pgExec(t, nil, "CREATE TABLE "+table+" (k text PRIMARY KEY, v int)")
	pgExec(t, nil, "INSERT INTO "+table+" VALUES ('a', 1)")
	cfg := setConfig(t, nil, routeItem(table, table+":", "cache-aside", table, "k", "value", "v", "ttl: 1h"))
	s, err := openSet(t, cfg, testRedis.Addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := s.List()[0]
	rc := newRedisClient(t, testRedis.Addr, 2)
	key := table + ":a"
	storing, release := make(chan struct{}), make(chan struct{})
	r.hooks.beforeStore = func(string) { close(storing); <-release }
	read := make(chan string, 1)
	go func() { read <- setDo(ctx, s, "GET", key) }()
	<-storing // the fill loaded 1 and passed its generation check
	r.hooks.beforeStore = nil
	wrote := make(chan string, 1)
	go func() { wrote <- setDo(ctx, s, "SET", key, "2") }()
	select {
	case got := <-wrote:
		t.Fatalf("the write answered %q while a fill of its key was storing", got)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if got := <-read; got != "$1\r\n1\r\n" {
		t.Fatalf("GET: %q", got)
	}
	if got := <-wrote; got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	if v, err := rc.Get(ctx, key).Result(); err != redis.Nil {
		t.Fatalf("after the write the cache holds %q (%v), want nothing", v, err)
	}
	if got := setDo(ctx, s, "GET", key); got != "$1\r\n2\r\n" {
		t.Fatalf("GET after the write: %q", got)
	}
}
