package deploy_test

import (
	"context"
	"debug/elf"
	"encoding/json"
	"io/fs"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/internal/config"
)

// The repository root, seen from deploy/.
const root = ".."

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, USER, ...
	args string
}

// stages parses the Dockerfile into its build stages.
func stages(t *testing.T) [][]instruction {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]instruction
	var cur string
	flush := func() {
		line := strings.TrimSpace(cur)
		cur = ""
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			out = append(out, nil)
		}
		if len(out) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile: %s before the first FROM", in.cmd)
			}
			return
		}
		out[len(out)-1] = append(out[len(out)-1], in)
	}
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // comments, also inside continued instructions
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur += strings.TrimSuffix(trimmed, `\`) + " "
			continue
		}
		cur += trimmed
		flush()
	}
	flush()
	if len(out) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a multi-stage build", len(out))
	}
	return out
}

func find(stage []instruction, cmd string) []instruction {
	var out []instruction
	for _, in := range stage {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// healthcheckCmd returns the exec-form command of the final stage's
// HEALTHCHECK.
func healthcheckCmd(t *testing.T, final []instruction) []string {
	t.Helper()
	hc := find(final, "HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("final stage has %d HEALTHCHECKs, want 1", len(hc))
	}
	_, rest, ok := strings.Cut(hc[0].args, "CMD ")
	if !ok || strings.HasPrefix(hc[0].args, "NONE") {
		t.Fatalf("HEALTHCHECK %s: no CMD", hc[0].args)
	}
	var argv []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(rest)), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("HEALTHCHECK CMD %s: want the exec form (a JSON array; distroless has no shell): %v", rest, err)
	}
	return argv
}

func TestDockerfileFinalStage(t *testing.T) {
	st := stages(t)
	final := st[len(st)-1]
	from := final[0].args
	if !strings.HasPrefix(from, "gcr.io/distroless/static-debian12:nonroot") && !strings.HasPrefix(from, "debian:bookworm-slim") {
		t.Errorf("final stage FROM %s, want distroless static or debian:bookworm-slim", from)
	}
	users := find(final, "USER")
	if len(users) == 0 {
		t.Fatal("final stage sets no USER: it would run as root")
	}
	user, _, _ := strings.Cut(users[len(users)-1].args, ":")
	if user == "" || user == "root" || user == "0" {
		t.Errorf("final stage USER %q is root", users[len(users)-1].args)
	}
	var ports []string
	for _, in := range find(final, "EXPOSE") {
		for _, p := range strings.Fields(in.args) {
			ports = append(ports, strings.TrimSuffix(p, "/tcp"))
		}
	}
	for _, want := range []string{"6380", "9121"} {
		if !slices.Contains(ports, want) {
			t.Errorf("final stage does not EXPOSE %s (exposes %v)", want, ports)
		}
	}
	argv := healthcheckCmd(t, final)
	if !strings.Contains(strings.Join(argv, " "), "127.0.0.1:9121/healthz") {
		t.Errorf("HEALTHCHECK %v does not probe the admin listener's /healthz", argv)
	}
	// The probe's binary must be copied into the final stage.
	copied := false
	for _, in := range find(final, "COPY") {
		if strings.HasSuffix(in.args, " "+argv[0]) {
			copied = true
		}
	}
	if !copied {
		t.Errorf("HEALTHCHECK runs %s, which no COPY in the final stage provides", argv[0])
	}
	entry, cmd := find(final, "ENTRYPOINT"), find(final, "CMD")
	if len(entry) != 1 || !strings.Contains(entry[0].args, `"/usr/local/bin/respite"`) {
		t.Errorf("ENTRYPOINT %v, want the respite binary in exec form", entry)
	}
	if len(cmd) != 1 || cmd[0].args != `["-config", "/etc/respite/config.yaml"]` {
		t.Errorf("CMD %v, want [\"-config\", \"/etc/respite/config.yaml\"]", cmd)
	}
}

// buildCommand is the build stage's go build command line.
func buildCommand(t *testing.T) string {
	t.Helper()
	var runs []string
	for _, st := range stages(t) {
		for _, in := range find(st, "RUN") {
			if strings.Contains(in.args, "go build") {
				runs = append(runs, in.args)
			}
		}
	}
	if len(runs) != 1 {
		t.Fatalf("Dockerfile has %d RUNs with go build, want 1", len(runs))
	}
	return runs[0]
}

// The Dockerfile's own go build command line builds a static binary that
// reports the version passed as VERSION.
func TestDockerfileBuildCommand(t *testing.T) {
	line := buildCommand(t)
	const want = `CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/respite ./cmd/proxy`
	if line != want {
		t.Errorf("build command:\n%s\nwant\n%s", line, want)
	}
	if !strings.Contains(line, "-o /out/respite") {
		t.Fatalf("build command %q does not write /out/respite", line)
	}
	out := filepath.Join(t.TempDir(), "respite")
	line = strings.Replace(line, "-o /out/respite", "-o "+out, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "sh", "-c", line)
	build.Dir = root
	build.Env = append(os.Environ(), "VERSION=v9.8.7-test", "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("sh -c %q: %v\n%s", line, err, b)
	}
	got, err := exec.Command(out, "-version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "respite v9.8.7-test" {
		t.Fatalf("respite -version: %q, %v", got, err)
	}
	if runtime.GOOS == "linux" {
		f, err := elf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the binary is dynamically linked; distroless/static needs a static one")
			}
		}
	}
}

// The HEALTHCHECK command itself, run against the admin handler: it
// succeeds while /healthz answers and fails when nothing listens. Needs a
// busybox on PATH (Debian: busybox-static, installed by scripts/deps.sh).
func TestHealthcheckProbe(t *testing.T) {
	st := stages(t)
	argv := healthcheckCmd(t, st[len(st)-1])
	if filepath.Base(argv[0]) != "busybox" {
		t.Fatalf("HEALTHCHECK runs %s, not busybox: update this test with the Dockerfile", argv[0])
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(`busybox not found: install it with "apt-get install -y busybox-static" (scripts/deps.sh does)`)
	}
	src := fakeSource{}
	srv := httptest.NewServer(admin.Handler(admin.NewMetrics(src), src))
	probe := func() error {
		args := slices.Clone(argv[1:])
		for i := range args {
			args[i] = strings.Replace(args[i], "127.0.0.1:9121", srv.Listener.Addr().String(), 1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, bb, args...).Run()
	}
	if err := probe(); err != nil {
		t.Fatalf("probe of a live /healthz failed: %v", err)
	}
	srv.Close()
	if err := probe(); err == nil {
		t.Fatal("probe succeeded with nothing listening")
	}
}

type fakeSource struct{}

func (fakeSource) Snapshot() admin.Snapshot        { return admin.Snapshot{} }
func (fakeSource) Ready(ctx context.Context) error { return nil }

var metricRE = regexp.MustCompile(`respite_[a-z_]+`)

// metricNames returns the respite_ metric names in s, histogram series
// mapped to the histogram's name.
func metricNames(s string) []string {
	var out []string
	for _, m := range metricRE.FindAllString(s, -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if n, ok := strings.CutSuffix(m, suffix); ok && slices.Contains(admin.MetricNames(), n) {
				m = n
			}
		}
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

func checkNames(t *testing.T, file, text string) {
	t.Helper()
	names := metricNames(text)
	if len(names) == 0 {
		t.Errorf("%s uses no respite_ metric", file)
	}
	for _, n := range names {
		if !slices.Contains(admin.MetricNames(), n) {
			t.Errorf("%s uses %s, which Respite does not export (admin.MetricNames)", file, n)
		}
	}
}

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json is not valid JSON: %v", err)
	}
	checkNames(t, "grafana-dashboard.json", string(data))
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: unbalanced parentheses in %s", p.Title, tg.Expr)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	checkNames(t, "grafana-dashboard.json queries", all)
	for what, parts := range map[string][]string{
		"hit rate per route":           {"sum by (route) (rate(respite_route_hits_total", "rate(respite_route_misses_total"},
		"DB loads/s":                   {"rate(respite_route_db_loads_total"},
		"write-back queue length":      {"respite_writeback_queue_length"},
		"oldest pending age":           {"respite_writeback_oldest_pending_seconds"},
		"DLQ size":                     {"respite_writeback_dead_letters"},
		"WATCH aborts/s":               {"rate(respite_watch_aborts_total"},
		"command latency p99 by class": {"histogram_quantile(0.99, sum by (class, le) (rate(respite_command_duration_seconds_bucket"},
		"pinned sessions":              {"respite_pinned_sessions"},
	} {
		for _, p := range parts {
			if !strings.Contains(all, p) {
				t.Errorf("dashboard has no %s panel (no query contains %q)", what, p)
			}
		}
	}
}

// ruleFile is a Prometheus rule file; unknown fields are errors.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert         string            `yaml:"alert"`
			Record        string            `yaml:"record"`
			Expr          string            `yaml:"expr"`
			For           string            `yaml:"for"`
			KeepFiringFor string            `yaml:"keep_firing_for"`
			Labels        map[string]string `yaml:"labels"`
			Annotations   map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestAlerts(t *testing.T) {
	data, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalWithOptions(data, &rf, yaml.DisallowUnknownField()); err != nil {
		t.Fatalf("alerts.yml: %s", yaml.FormatError(err, false, true))
	}
	checkNames(t, "alerts.yml", string(data))
	alerts := map[string]string{}
	fors := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("group %s: a rule without alert name or expr", g.Name)
				continue
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: want a severity label and a summary", r.Alert)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			alerts[r.Alert], fors[r.Alert] = r.Expr, r.For
		}
	}
	for _, tc := range []struct {
		alert, for_ string
		parts       []string
	}{
		{"RespiteRouteHitRateLow", "10m", []string{"respite_route_hits_total", "respite_route_misses_total", "by (route)", "< 0.80"}},
		{"RespiteWritebackQueueBacklog", "", []string{"respite_writeback_queue_length", "> 10000"}},
		{"RespiteWritebackLagHigh", "", []string{"respite_writeback_oldest_pending_seconds", "> 60"}},
		{"RespiteDeadLetters", "", []string{"respite_writeback_dead_letters", "> 0"}},
		{"RespiteWritebackQueueLost", "", []string{"respite_writeback_queue_lost_total", "> 0"}},
		{"RespiteWritebackWritesRefused", "", []string{"respite_writeback_writes_refused", "> 0"}},
		{"RespiteRoutesDegraded", "", []string{"respite_routes_degraded", "> 0"}},
	} {
		expr, ok := alerts[tc.alert]
		if !ok {
			t.Errorf("alerts.yml has no %s", tc.alert)
			continue
		}
		for _, p := range tc.parts {
			if !strings.Contains(expr, p) {
				t.Errorf("%s: expr %q does not contain %q", tc.alert, expr, p)
			}
		}
		if tc.for_ != "" && fors[tc.alert] != tc.for_ {
			t.Errorf("%s: for %q, want %q", tc.alert, fors[tc.alert], tc.for_)
		}
	}
}

func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image           string         `yaml:"image"`
			Build           map[string]any `yaml:"build"`
			Volumes         []string       `yaml:"volumes"`
			StopGracePeriod string         `yaml:"stop_grace_period"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for name, image := range map[string]string{"redis": "redis:7", "postgres": "postgres:15"} {
		if got := compose.Services[name].Image; got != image {
			t.Errorf("service %s: image %q, want %q", name, got, image)
		}
	}
	rs, ok := compose.Services["respite"]
	if !ok || rs.Build["context"] != ".." || rs.Build["dockerfile"] != "Dockerfile" {
		t.Errorf("service respite does not build ../Dockerfile: %v", rs.Build)
	}
	// Bind mounts point at files that exist.
	mounts := map[string]string{}
	for _, s := range compose.Services {
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && strings.HasPrefix(parts[0], ".") {
				if _, err := os.Stat(parts[0]); err != nil {
					t.Errorf("volume %s: %v", v, err)
				}
				mounts[parts[1]] = parts[0]
			}
		}
	}
	if mounts["/etc/respite/config.yaml"] != "./config.yaml" {
		t.Errorf("deploy/config.yaml is not mounted at /etc/respite/config.yaml: %v", mounts)
	}
	if mounts["/docker-entrypoint-initdb.d/01-schema.sql"] != "../internal/demo/schema.sql" {
		t.Errorf("the demo schema is not mounted into /docker-entrypoint-initdb.d: %v", mounts)
	}
	// docker stop must wait longer than the proxy's write-back drain.
	cfg := parseDeployConfig(t)
	grace, err := time.ParseDuration(rs.StopGracePeriod)
	if err != nil || grace <= time.Duration(cfg.ShutdownTimeout) {
		t.Errorf("respite stop_grace_period %q must exceed shutdown_timeout %v", rs.StopGracePeriod, time.Duration(cfg.ShutdownTimeout))
	}

	var prom struct {
		RuleFiles     []string         `yaml:"rule_files"`
		ScrapeConfigs []map[string]any `yaml:"scrape_configs"`
	}
	data, err = os.ReadFile("prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &prom); err != nil || len(prom.ScrapeConfigs) == 0 || !slices.Contains(prom.RuleFiles, "/etc/prometheus/alerts.yml") {
		t.Errorf("prometheus.yml: %v %+v", err, prom)
	}
}

// hasAdminField reports whether the configuration knows the top-level
// admin field yet.
func hasAdminField() bool {
	ty := reflect.TypeOf(config.Config{})
	for i := range ty.NumField() {
		if ty.Field(i).Tag.Get("yaml") == "admin" {
			return true
		}
	}
	return false
}

// parseDeployConfig loads deploy/config.yaml with the real parser. Until
// the configuration has an admin field, that line is left out.
func parseDeployConfig(t *testing.T) config.Config {
	t.Helper()
	data, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("POSTGRES_PASSWORD", "pw")
	t.Setenv("REDIS_PASSWORD", "")
	text := string(data)
	if !hasAdminField() {
		var kept []string
		for _, l := range strings.Split(text, "\n") {
			if !strings.HasPrefix(l, "admin:") {
				kept = append(kept, l)
			}
		}
		text = strings.Join(kept, "\n")
	}
	cfg, err := config.Parse("deploy/config.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestDeployConfig(t *testing.T) {
	cfg := parseDeployConfig(t)
	if cfg.Listen != "0.0.0.0:6380" {
		t.Errorf("listen %q, want 0.0.0.0:6380", cfg.Listen)
	}
	if cfg.Upstream.Addr != "redis:6379" || !strings.Contains(cfg.Postgres.DSN, "@postgres:5432/") {
		t.Errorf("upstream %q, dsn %q: want the compose services", cfg.Upstream.Addr, cfg.Postgres.DSN)
	}
	if len(cfg.Routes) == 0 {
		t.Error("no routes")
	}
	var raw map[string]any
	data, _ := os.ReadFile("config.yaml")
	if err := yaml.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if a, _ := raw["admin"].(string); !strings.HasSuffix(a, ":9121") {
		t.Errorf("admin %q: the image's HEALTHCHECK needs the admin listener on port 9121", a)
	}
}

// docs/OPERATIONS.md names every metric, and every test it cites exists.
func TestOperationsDoc(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "docs", "OPERATIONS.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, n := range admin.MetricNames() {
		if !strings.Contains(doc, "`"+n) {
			t.Errorf("docs/OPERATIONS.md does not describe %s", n)
		}
	}
	tests := map[string]bool{}
	def := regexp.MustCompile(`(?m)^func (Test\w+)\(`)
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, "_test.go") {
			b, _ := os.ReadFile(path)
			for _, m := range def.FindAllStringSubmatch(string(b), -1) {
				tests[m[1]] = true
			}
		}
		return nil
	})
	for _, m := range regexp.MustCompile(`\bTest[A-Z]\w+`).FindAllString(doc, -1) {
		if !tests[m] {
			t.Errorf("docs/OPERATIONS.md cites %s, which no _test.go defines", m)
		}
	}
}

// docs/CONFIGURATION.md documents every field of internal/config.
func TestConfigurationDoc(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "docs", "CONFIGURATION.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, f := range fields(reflect.TypeOf(config.Config{}), "") {
		if !strings.Contains(doc, "`"+f+"`") {
			t.Errorf("docs/CONFIGURATION.md does not document `%s`", f)
		}
	}
}

// fields lists the YAML paths of ty's leaf fields: upstream.addr,
// routes[].ttl, routes[].local_cache.size, ...
func fields(ty reflect.Type, prefix string) []string {
	var out []string
	for i := range ty.NumField() {
		f := ty.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, fields(ft, prefix+name+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, fields(ft.Elem(), prefix+name+"[].")...)
		default:
			out = append(out, prefix+name)
		}
	}
	return out
}
