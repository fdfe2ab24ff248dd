package policy

import "sync"

// flights coalesces the loads of one key: the first caller of join leads
// the key's flight and must land it; every caller that joins before it
// lands waits for the same result. It is singleflight's DoChan
// (golang.org/x/sync/singleflight) with the one thing a batch needs and
// that API does not give: the caller learns whether it leads, so one query
// can lead the flights of many keys at once (fetchMany). forget detaches a
// key's flight: callers that join later start a new one, and the old one
// still lands for those already waiting.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

// flight is one load in progress; rw and err are set before done closes.
type flight struct {
	done chan struct{}
	rw   row
	err  error
}

// join returns key's flight in progress, or a new one that the caller
// leads (lead).
func (f *flights) join(key string) (fl *flight, lead bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.m[key]; fl != nil {
		return fl, false
	}
	if f.m == nil {
		f.m = make(map[string]*flight)
	}
	fl = &flight{done: make(chan struct{})}
	f.m[key] = fl
	return fl, true
}

// land ends the flight fl of key with its result.
func (f *flights) land(key string, fl *flight, rw row, err error) {
	f.mu.Lock()
	if f.m[key] == fl {
		delete(f.m, key)
	}
	f.mu.Unlock()
	fl.rw, fl.err = rw, err
	close(fl.done)
}

// forget detaches key's flight, if any, from later callers.
func (f *flights) forget(key string) {
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
}
