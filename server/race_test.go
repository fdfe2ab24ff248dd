//go:build race

package server

// raceSlow stretches the arrival order's bounded waits (order.slow) in
// tests built with -race: the race detector slows every goroutine several
// times, and a client's reader may then take longer than orderWait (1 ms)
// to claim bytes that arrived first, which the order then no longer waits
// for (as designed: the wait is bounded).
const raceSlow = 10
