package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/redis/go-redis/v9"
)

// check waits, bounded, until the proxy has drained its write-back queues
// and every routed key's cache agrees with PostgreSQL, then checks every
// promise and files the counts and violations in the report.
func (w *workload) check() error {
	e, r := w.e, w.e.report
	for _, l := range w.plain {
		add(&r.Plain, l.counts)
	}
	for _, l := range w.ca {
		add(&r.CacheAside, l.counts)
	}
	for _, l := range w.caR {
		add(&r.CacheAsideReads, l.counts)
	}
	for _, l := range w.wt {
		add(&r.WriteThrough, l.sets)
		add(&r.WriteThroughReads, l.gets)
	}
	for _, l := range w.wb {
		add(&r.WriteBack, l.counts)
	}
	r.Errors = w.errs

	c := w.client(4)
	defer c.Close()
	ctx := context.Background()

	// Converge: bounded, polled.
	t0 := time.Now()
	var problems []string
	for {
		problems = w.disagreements(ctx, c)
		if len(problems) == 0 || time.Since(t0) > drainTimeout {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			e.violation("%v after the load stopped: %s", drainTimeout, p)
		}
	} else {
		e.logf("queues drained and caches agree with PostgreSQL %v after the load stopped", time.Since(t0).Round(time.Millisecond))
	}

	if err := w.checkPlain(ctx, c); err != nil {
		return err
	}
	if err := w.checkWriteBack(ctx, c); err != nil {
		return err
	}
	if err := w.checkCacheAside(); err != nil {
		return err
	}
	return w.checkWriteThrough(ctx, c)
}

func add(to *ClassCounts, c ClassCounts) {
	to.Acked += c.Acked
	to.Failed += c.Failed
}

// pgRows reads table's rows: key -> value.
func (e *env) pgRows(table string) (map[string]string, error) {
	out, err := e.pg.Query("SELECT k, v FROM " + table)
	if err != nil {
		return nil, err
	}
	rows := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "|"); ok {
			rows[k] = v
		}
	}
	return rows, nil
}

// routedKeys is every key the clients touched, sorted, per class.
func (w *workload) routedKeys() (ca, wt, wb []string) {
	seen := map[string]bool{}
	add := func(to *[]string, k string) {
		if !seen[k] {
			seen[k] = true
			*to = append(*to, k)
		}
	}
	for _, l := range w.ca {
		for k := range l.lastAcked {
			add(&ca, k)
		}
		for k := range l.unknown {
			add(&ca, k)
		}
	}
	for _, l := range w.caR {
		for k := range l.keys {
			add(&ca, k)
		}
	}
	for _, l := range w.wt {
		for _, op := range l.ops {
			add(&wt, op.key)
		}
	}
	for i := 0; i < wbKeys; i++ {
		add(&wb, wbKey(i))
	}
	sort.Strings(ca)
	sort.Strings(wt)
	return
}

// disagreements lists what is not yet as it must end: a write-back queue
// not empty, a write-back key whose row differs from the cache, a
// cache-aside or write-through key whose value through the proxy, or whose
// cached copy in Redis, differs from its row.
func (w *workload) disagreements(ctx context.Context, c *redis.Client) []string {
	e := w.e
	var out []string
	ca, wt, wb := w.routedKeys()
	rows := map[string]string{}
	for _, t := range []string{"chaos_ca", "chaos_wt", "chaos_wb"} {
		m, err := e.pgRows(t)
		if err != nil {
			return []string{"reading PostgreSQL: " + err.Error()}
		}
		prefix := map[string]string{"chaos_ca": "ca:", "chaos_wt": "wt:", "chaos_wb": "wb:"}[t]
		for k, v := range m {
			rows[prefix+k] = v
		}
	}
	q, err := queueStats(ctx, c)
	if err != nil {
		return []string{"RESPITE QUEUE: " + err.Error()}
	}
	if q.length != 0 || q.inFlight != 0 {
		out = append(out, fmt.Sprintf("write-back queue length %d, in flight %d", q.length, q.inFlight))
	}
	get := func(c *redis.Client, k string) (string, bool, error) {
		v, err := c.Get(ctx, k).Result()
		if err == redis.Nil {
			return "", false, nil
		}
		return v, err == nil, err
	}
	for _, k := range wb {
		cached, ok, err := get(e.direct, k)
		row, found := rows[k]
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("%s: Redis: %v", k, err))
		case ok != found || cached != row:
			out = append(out, fmt.Sprintf("%s: cache %q (present %v), PostgreSQL %q (present %v)", k, cached, ok, row, found))
		}
	}
	for _, k := range append(ca, wt...) {
		row, found := rows[k]
		served, ok, err := get(c, k)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: GET through the proxy: %v", k, err))
			continue
		}
		if ok != found || served != row {
			out = append(out, fmt.Sprintf("%s: the proxy serves %q (present %v), PostgreSQL has %q (present %v)", k, served, ok, row, found))
		}
		cached, ok, err := get(e.direct, k)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: Redis: %v", k, err))
		} else if ok && (!found || cached != row) {
			out = append(out, fmt.Sprintf("%s: cached in Redis %q, PostgreSQL has %q (present %v)", k, cached, row, found))
		}
		if n, err := e.direct.Exists(ctx, "respite:neg:"+k).Result(); err == nil && n == 1 && found {
			out = append(out, fmt.Sprintf("%s: a negative marker is cached, PostgreSQL has %q", k, row))
		}
	}
	return out
}

type queue struct{ length, inFlight, deadLetters int64 }

// queueStats sums RESPITE QUEUE over the write-back routes.
func queueStats(ctx context.Context, c *redis.Client) (queue, error) {
	var q queue
	v, err := c.Do(ctx, "RESPITE", "QUEUE").Result()
	if err != nil {
		return q, err
	}
	routes, ok := v.([]any)
	if !ok {
		return q, fmt.Errorf("unexpected reply %v", v)
	}
	for _, rt := range routes {
		fields, ok := rt.([]any)
		if !ok {
			return q, fmt.Errorf("unexpected entry %v", rt)
		}
		for i := 0; i+1 < len(fields); i += 2 {
			n, _ := fields[i+1].(int64)
			switch fields[i] {
			case "length":
				q.length += n
			case "in_flight":
				q.inFlight += n
			case "dead_letters":
				q.deadLetters += n
			}
		}
	}
	return q, nil
}

// checkPlain: every acknowledged SET of a plain key is readable through
// the proxy.
func (w *workload) checkPlain(ctx context.Context, c *redis.Client) error {
	missing := 0
	var first string
	for i, l := range w.plain {
		for from := 0; from < len(l.acked); from += 500 {
			batch := l.acked[from:min(from+500, len(l.acked))]
			keys := make([]string, len(batch))
			for j, n := range batch {
				keys[j] = plainKey(i, n)
			}
			vals, err := c.MGet(ctx, keys...).Result()
			if err != nil {
				return fmt.Errorf("MGET of plain keys: %w", err)
			}
			for j, v := range vals {
				if s, _ := v.(string); s != strconv.FormatInt(batch[j], 10) {
					if missing == 0 {
						first = fmt.Sprintf("%s = %v", keys[j], v)
					}
					missing++
				}
			}
		}
	}
	if missing > 0 {
		w.e.violation("plain: %d acknowledged SETs not readable (first: %s)", missing, first)
	}
	return nil
}

// checkWriteBack: per key, acknowledged <= PostgreSQL's value <=
// acknowledged + failed; no two acknowledged INCRs returned the same
// value, none more than the final value; nothing dead-lettered.
func (w *workload) checkWriteBack(ctx context.Context, c *redis.Client) error {
	e := w.e
	rows, err := e.pgRows("chaos_wb")
	if err != nil {
		return err
	}
	_, _, keys := w.routedKeys()
	for _, k := range keys {
		var acked, failed int64
		seen := map[int64]int{}
		for _, l := range w.wb {
			acked += l.acked[k]
			failed += l.failed[k]
			for _, v := range l.replies[k] {
				seen[v]++
			}
		}
		var v int64
		if s, ok := rows[strings.TrimPrefix(k, "wb:")]; ok {
			v, _ = strconv.ParseInt(s, 10, 64)
		}
		e.report.WriteBackSum += v
		if v < acked || v > acked+failed {
			e.violation("write-back %s: PostgreSQL has %d, acknowledged INCRs %d, failed (outcome unknown) %d: want %d..%d",
				k, v, acked, failed, acked, acked+failed)
		}
		dups := 0
		for reply, n := range seen {
			if n > 1 {
				dups += n - 1
			}
			if reply > v {
				e.violation("write-back %s: an INCR was acknowledged with %d, PostgreSQL ends at %d", k, reply, v)
				break
			}
		}
		if dups > 0 {
			e.violation("write-back %s: %d acknowledged INCRs returned a value another one had returned (the counter went back)", k, dups)
		}
	}
	q, err := queueStats(ctx, c)
	if err != nil {
		return fmt.Errorf("RESPITE QUEUE: %w", err)
	}
	if q.deadLetters > 0 {
		e.violation("write-back: %d entries dead-lettered", q.deadLetters)
	}
	return nil
}

// checkCacheAside: each key's row holds its last acknowledged write, or a
// write whose outcome is unknown (which may have landed after it).
func (w *workload) checkCacheAside() error {
	e := w.e
	rows, err := e.pgRows("chaos_ca")
	if err != nil {
		return err
	}
	for _, l := range w.ca {
		keys := map[string]bool{}
		for k := range l.lastAcked {
			keys[k] = true
		}
		for k := range l.unknown {
			keys[k] = true
		}
		for k := range keys {
			row, found := rows[strings.TrimPrefix(k, "ca:")]
			last, acked := l.lastAcked[k]
			n, _ := strconv.ParseInt(row, 10, 64)
			switch {
			case !found && !acked:
			case !found:
				e.violation("cache-aside %s: no row, the last acknowledged SET wrote %d", k, last)
			case n == last || l.unknown[k][n]:
			default:
				e.violation("cache-aside %s: PostgreSQL has %q, the last acknowledged SET wrote %d (and %q was not a failed one)", k, row, last, row)
			}
		}
	}
	return nil
}

// wtInput and wtOutput are the register model's: GET or SET of one key.
type wtInput struct {
	key   string
	set   bool
	value string
}

type wtOutput struct {
	value   string // GET's reply
	unknown bool   // a failed SET
}

// registerModel is a register per key (partitioned by key), empty (nil)
// at first. A SET always succeeds (also one that failed: if it took
// effect at all, it took effect as a SET); a GET must return the value.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(wtInput).key
			if byKey[k] == nil {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(wtInput)
		if in.set {
			return true, in.value
		}
		return output.(wtOutput).value == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(wtInput), output.(wtOutput)
		switch {
		case in.set && out.unknown:
			return fmt.Sprintf("set(%s, %q) failed", in.key, in.value)
		case in.set:
			return fmt.Sprintf("set(%s, %q)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.key, out.value)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
}

// Bounds of the linearizability check.
const (
	wtKeyBudget   = 20 * time.Second
	wtCheckBudget = 60 * time.Second
)

// writeHistory writes one key's operations, by call time, in ms since the
// run began (a failed SET's return is the end of the history).
func writeHistory(path string, ops []porcupine.Operation) {
	ops = append([]porcupine.Operation(nil), ops...)
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	var b strings.Builder
	for _, op := range ops {
		fmt.Fprintf(&b, "%10.3f %10.3f client %d %s\n", float64(op.Call)/1e6, float64(op.Return)/1e6, op.ClientId,
			registerModel.DescribeOperation(op.Input, op.Output))
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
}

// checkWriteThrough reads every key once more through the proxy (after
// everything else: the history's last operations) and checks the history
// with porcupine. Failed SETs return after the end of the history: they
// may take effect at any time after their call.
func (w *workload) checkWriteThrough(ctx context.Context, c *redis.Client) error {
	e := w.e
	var history []porcupine.Operation
	for id, l := range w.wt {
		for _, op := range l.ops {
			history = append(history, porcupine.Operation{
				ClientId: id,
				Input:    wtInput{key: op.key, set: op.set, value: op.value},
				Call:     op.call,
				Output:   wtOutput{value: op.value, unknown: op.unknown},
				Return:   op.ret,
			})
		}
	}
	_, keys, _ := w.routedKeys()
	for _, k := range keys {
		call := w.now()
		v, err := c.Get(ctx, k).Result()
		ret := w.now()
		if err == redis.Nil {
			v, err = "", nil
		}
		if err != nil {
			return fmt.Errorf("final GET %s: %w", k, err)
		}
		history = append(history, porcupine.Operation{ClientId: len(w.wt), Input: wtInput{key: k}, Call: call, Output: wtOutput{value: v}, Return: ret})
	}
	// A failed SET whose value no GET returned is left out: it can always
	// be linearized last (after the final reads), where it changes
	// nothing, so the history is linearizable with it exactly when it is
	// without it (values are unique). Porcupine's search grows
	// exponentially with failed operations that overlap reads; most of
	// them (a PostgreSQL outage's refused writes) are never observed.
	observed := map[string]bool{}
	for _, op := range history {
		if in := op.Input.(wtInput); !in.set {
			observed[in.key+"\x00"+op.Output.(wtOutput).value] = true
		}
	}
	end := w.now() + 1
	kept := history[:0]
	for _, op := range history {
		in := op.Input.(wtInput)
		if op.Output.(wtOutput).unknown {
			if !observed[in.key+"\x00"+in.value] {
				e.report.WTUnobserved++
				continue
			}
			e.report.WTObserved++
			op.Return = end
		}
		kept = append(kept, op)
	}
	history = kept
	e.report.WTHistory = len(history)
	t := time.Now()
	// Key by key (the register of one key is independent of the others),
	// each bounded: an illegal history makes porcupine search every
	// order, which can take exponentially long.
	deadline := t.Add(wtCheckBudget)
	for _, part := range registerModel.Partition(history) {
		key := part[0].Input.(wtInput).key
		left := time.Until(deadline)
		if left <= 0 {
			e.violation("write-through: no time left (%v in all) to check key %s and the keys after it", wtCheckBudget, key)
			break
		}
		res, info := porcupine.CheckOperationsVerbose(registerModel, part, min(left, wtKeyBudget))
		if res == porcupine.Ok {
			continue
		}
		name := strings.ReplaceAll(key, ":", "_")
		path := filepath.Join(e.cfg.Dir, "wt-"+name+".html")
		if err := porcupine.VisualizePath(registerModel, info, path); err != nil {
			path = "(no visualization: " + err.Error() + ")"
		}
		dump := filepath.Join(e.cfg.Dir, "wt-"+name+".txt")
		writeHistory(dump, part)
		if res == porcupine.Illegal {
			e.violation("write-through %s: its history of %d operations is not linearizable (%s, %s)", key, len(part), dump, path)
		} else {
			e.violation("write-through %s: porcupine could not decide within %v whether its history of %d operations is linearizable (%s)", key, wtKeyBudget, len(part), dump)
		}
	}
	e.report.WTCheck = time.Since(t)
	return nil
}
