package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The keys each class of clients works on.
const (
	plainWriters = 2
	caWriters    = 2 // each owns caKeysPer keys of an epoch: one writer per key
	caKeysPer    = 3
	caReaders    = 2
	wtClients    = 4 // SET and GET on the write-through keys of an epoch
	wtKeys       = 4
	wbClients    = 3 // INCR on every write-back key
	wbKeys       = 8
)

// Cache-aside and write-through clients work on the keys of the current
// epoch (a quarter of their operations on the previous one's), so that
// every key is written for a few seconds and then left alone: a cached
// value a fault left stale stays visible to the final check (a key
// written all along would be corrected by the next write), and each key's
// history stays small for the linearizability checker.
const epochLen = 3 * time.Second

// epoch is the current epoch, or the previous one a quarter of the time.
func (w *workload) epoch(rng *rand.Rand) int {
	n := int(time.Since(w.e.start) / epochLen)
	if n > 0 && rng.IntN(4) == 0 {
		n--
	}
	return n
}

// errorBackoff is how long a client waits after a failed command, so that
// an outage does not turn into a busy loop (and a flood of operations of
// unknown outcome).
const (
	errorBackoffMin = 30 * time.Millisecond
	errorBackoffMax = 120 * time.Millisecond
)

// workload is the clients and what they recorded.
type workload struct {
	e    *env
	stop chan struct{}
	wg   sync.WaitGroup

	errMu sync.Mutex
	errs  map[string]map[string]int // class -> error text (digits as #) -> count

	plain []*plainLog
	ca    []*caLog
	caR   []*caReadLog
	wt    []*wtLog
	wb    []*wbLog
}

func newWorkload(e *env) *workload {
	return &workload{e: e, stop: make(chan struct{}), errs: map[string]map[string]int{}}
}

// noteErr counts a failed command by its error's text, with numbers (ports,
// addresses, counts) replaced by #.
func (w *workload) noteErr(class string, err error) {
	msg := []rune(err.Error())
	out := make([]rune, 0, len(msg))
	for _, r := range msg {
		if r >= '0' && r <= '9' {
			if len(out) > 0 && out[len(out)-1] == '#' {
				continue
			}
			r = '#'
		}
		out = append(out, r)
	}
	if len(out) > 160 {
		out = append(out[:160], '.', '.', '.')
	}
	w.errMu.Lock()
	defer w.errMu.Unlock()
	if w.errs[class] == nil {
		w.errs[class] = map[string]int{}
	}
	w.errs[class][string(out)]++
}

// plainLog is one plain writer's: it SETs plain:<w>:<n> to n, n = 1, 2, ...
type plainLog struct {
	counts ClassCounts
	acked  []int64
}

// caLog is one cache-aside writer's: it SETs its keys ca:<epoch>-<w>-<i>
// to an increasing sequence number.
type caLog struct {
	counts    ClassCounts
	lastAcked map[string]int64          // per key; absent: none acknowledged
	unknown   map[string]map[int64]bool // per key: values of failed SETs
}

// caReadLog is one cache-aside reader's.
type caReadLog struct {
	counts ClassCounts
	keys   map[string]bool // every key it read
}

// wtOp is one write-through operation.
type wtOp struct {
	key     string
	set     bool
	value   string // SET's argument, GET's reply ("" for nil)
	call    int64  // ns since the run began
	ret     int64
	unknown bool // a SET that failed: it may or may not have taken effect
}

type wtLog struct {
	sets, gets ClassCounts
	ops        []wtOp
}

// wbLog is one write-back client's: per key, INCRs acknowledged and
// failed, and every value an acknowledged INCR returned.
type wbLog struct {
	counts  ClassCounts
	acked   map[string]int64
	failed  map[string]int64
	replies map[string][]int64
}

func (w *workload) client(poolSize int) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr: w.e.addr, Protocol: 2, DisableIdentity: true,
		MaxRetries: -1, PoolSize: poolSize,
		DialTimeout: 2 * time.Second, ReadTimeout: callTimeout, WriteTimeout: callTimeout,
	})
}

func (w *workload) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// think is a client's pause between two commands (0-2 ms): the load
// stays below what the two cores can take, leaving the servers and the
// proxy room to recover from faults, and Redis' AOF grows slower.
func think(rng *rand.Rand) {
	time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
}

func backoff(rng *rand.Rand) {
	time.Sleep(errorBackoffMin + time.Duration(rng.Int64N(int64(errorBackoffMax-errorBackoffMin))))
}

// now is the operation clock: monotonic nanoseconds since the run began.
func (w *workload) now() int64 { return int64(time.Since(w.e.start)) }

func (w *workload) goClient(f func(c *redis.Client, rng *rand.Rand)) {
	seed := w.e.rng.Uint64()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		c := w.client(1)
		defer c.Close()
		f(c, rand.New(rand.NewPCG(seed, seed+1)))
	}()
}

// begin starts every client.
func (w *workload) begin() {
	ctx := context.Background()
	for i := 0; i < plainWriters; i++ {
		l := &plainLog{}
		w.plain = append(w.plain, l)
		w.goClient(func(c *redis.Client, rng *rand.Rand) {
			for n := int64(1); !w.stopped(); n++ {
				if err := c.Set(ctx, plainKey(i, n), n, 0).Err(); err != nil {
					w.noteErr("plain SET", err)
					l.counts.Failed++
					backoff(rng)
					continue
				}
				l.counts.Acked++
				l.acked = append(l.acked, n)
				think(rng)
			}
		})
	}
	for i := 0; i < caWriters; i++ {
		l := &caLog{lastAcked: map[string]int64{}, unknown: map[string]map[int64]bool{}}
		w.ca = append(w.ca, l)
		w.goClient(func(c *redis.Client, rng *rand.Rand) {
			for n := int64(1); !w.stopped(); n++ {
				k := caKey(w.epoch(rng), i, rng.IntN(caKeysPer))
				if err := c.Set(ctx, k, n, 0).Err(); err != nil {
					w.noteErr("cache-aside SET", err)
					l.counts.Failed++
					if l.unknown[k] == nil {
						l.unknown[k] = map[int64]bool{}
					}
					l.unknown[k][n] = true
					backoff(rng)
					continue
				}
				l.counts.Acked++
				l.lastAcked[k] = n
				think(rng)
			}
		})
	}
	for i := 0; i < caReaders; i++ {
		l := &caReadLog{keys: map[string]bool{}}
		w.caR = append(w.caR, l)
		w.goClient(func(c *redis.Client, rng *rand.Rand) {
			cnt := &l.counts
			for !w.stopped() {
				k := caKey(w.epoch(rng), rng.IntN(caWriters), rng.IntN(caKeysPer))
				l.keys[k] = true
				err := c.Get(ctx, k).Err()
				if err != nil && err != redis.Nil {
					w.noteErr("cache-aside GET", err)
					cnt.Failed++
					backoff(rng)
					continue
				}
				cnt.Acked++
				time.Sleep(time.Millisecond)
			}
		})
	}
	for i := 0; i < wtClients; i++ {
		l := &wtLog{}
		w.wt = append(w.wt, l)
		w.goClient(func(c *redis.Client, rng *rand.Rand) {
			for n := 1; !w.stopped(); n++ {
				k := wtKey(w.epoch(rng), rng.IntN(wtKeys))
				op := wtOp{key: k, set: rng.IntN(2) == 0}
				var err error
				if op.set {
					op.value = fmt.Sprintf("c%d-%d", i, n)
					op.call = w.now()
					err = c.Set(ctx, k, op.value, 0).Err()
					op.ret = w.now()
				} else {
					op.call = w.now()
					op.value, err = c.Get(ctx, k).Result()
					op.ret = w.now()
					if err == redis.Nil {
						op.value, err = "", nil
					}
				}
				if err != nil {
					w.noteErr(map[bool]string{true: "write-through SET", false: "write-through GET"}[op.set], err)
				}
				switch {
				case err == nil && op.set:
					l.sets.Acked++
				case err == nil:
					l.gets.Acked++
				case op.set && notSent(err):
					l.sets.Failed++ // never reached the proxy: dropped
				case op.set:
					l.sets.Failed++
					op.unknown = true
				default:
					l.gets.Failed++ // a failed GET changed nothing: dropped
				}
				if err == nil || op.unknown {
					l.ops = append(l.ops, op)
				}
				if err != nil {
					backoff(rng)
				} else {
					think(rng)
				}
			}
		})
	}
	for i := 0; i < wbClients; i++ {
		l := &wbLog{acked: map[string]int64{}, failed: map[string]int64{}, replies: map[string][]int64{}}
		w.wb = append(w.wb, l)
		w.goClient(func(c *redis.Client, rng *rand.Rand) {
			for !w.stopped() {
				k := wbKey(rng.IntN(wbKeys))
				v, err := c.Incr(ctx, k).Result()
				if err != nil {
					w.noteErr("write-back INCR", err)
					l.counts.Failed++
					l.failed[k]++
					backoff(rng)
					continue
				}
				l.counts.Acked++
				l.acked[k]++
				l.replies[k] = append(l.replies[k], v)
				think(rng)
			}
		})
	}
}

// notSent reports an error after which the command certainly never
// reached the proxy: the connection to it could not be made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// end stops the clients and waits for them.
func (w *workload) end() {
	close(w.stop)
	w.wg.Wait()
}

func plainKey(w int, n int64) string {
	return "plain:" + strconv.Itoa(w) + ":" + strconv.FormatInt(n, 10)
}
func caKey(epoch, w, i int) string {
	return "ca:" + strconv.Itoa(epoch) + "-" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
}
func wtKey(epoch, i int) string { return "wt:" + strconv.Itoa(epoch) + "-" + strconv.Itoa(i) }
func wbKey(i int) string        { return "wb:" + strconv.Itoa(i) }
