package router

import (
	"strings"
	"testing"
)

func classify(line string) *Command {
	var cmd Command
	var args [][]byte
	for _, a := range strings.Fields(line) {
		args = append(args, []byte(a))
	}
	Classify(&cmd, args, nil)
	return &cmd
}

// How commands spread over a cluster, and which arguments choose the
// slot.
func TestClusterSpread(t *testing.T) {
	for line, want := range map[string]Spread{
		"FLUSHALL": SpreadAll, "FLUSHDB ASYNC": SpreadAll, "SCRIPT LOAD x": SpreadAll,
		"FUNCTION LOAD x": SpreadAll, "FUNCTION FLUSH": SpreadAll, "DBSIZE": SpreadSum,
		"KEYS *": SpreadConcat, "SCAN 0": SpreadScan, "GET k": SpreadOne, "PING": SpreadOne,
		"SCAN":            SpreadOne, // wrong arity: any node refuses it
		"SCRIPT EXISTS a": SpreadOne, "RANDOMKEY": SpreadRandom,
	} {
		if got := classify(line).ClusterSpread(); got != want {
			t.Errorf("%s: spread %d, want %d", line, got, want)
		}
	}
	for line, want := range map[string][]int{
		"GET k":               {1},
		"MSET a 1 b 2":        {1, 3},
		"SPUBLISH ch m":       {1},
		"SSUBSCRIBE a b":      {1, 2},
		"SUNSUBSCRIBE a":      {1},
		"PUBLISH ch m":        nil,
		"EVAL s 2 a b c":      {3, 4},
		"PING":                nil,
		"SUBSCRIBE a":         nil,
		"BLMPOP 1 2 a b LEFT": {3, 4},
	} {
		got := classify(line).SlotArgs(nil)
		if toString(got) != toString(want) {
			t.Errorf("%s: slot args %v, want %v", line, got, want)
		}
	}
	for line, want := range map[string][3]int{ // pos, millis, ok
		"BLPOP a b 5":                         {3, 0, 1},
		"BLMOVE a b LEFT RIGHT 1.5":           {5, 0, 1},
		"BZMPOP 2 1 z MIN":                    {1, 0, 1},
		"XREAD COUNT 1 BLOCK 100 STREAMS s 0": {4, 1, 1},
		"XREAD STREAMS block 0":               {0, 0, 0},
		"WAIT 1 0":                            {0, 0, 0},
	} {
		pos, ms, ok := classify(line).BlockTimeout()
		if got := [3]int{pos, b2i(ms), b2i(ok)}; got != want {
			t.Errorf("%s: timeout %v, want %v", line, got, want)
		}
	}
}

func toString(v []int) string {
	var b strings.Builder
	for _, n := range v {
		b.WriteString(" " + string(rune('0'+n)))
	}
	return strings.TrimSpace(b.String())
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// cluster_answers: the cluster description and ASKING/READONLY are the
// proxy's to answer, outside MULTI; without the setting Redis answers.
func TestDispatchClusterAnswers(t *testing.T) {
	for _, line := range []string{"CLUSTER SLOTS", "CLUSTER SHARDS", "CLUSTER NODES", "CLUSTER INFO", "CLUSTER MYID", "CLUSTER KEYSLOT k", "ASKING", "READONLY", "READWRITE"} {
		cmd := classify(line)
		if d := Dispatch(State{Proto: 2, ClusterAnswers: true}, cmd); d.Path != PathLocal {
			t.Errorf("%s with cluster_answers: %v", line, d.Path)
		}
		if d := Dispatch(State{Proto: 2}, cmd); d.Path != PathShared {
			t.Errorf("%s without: %v", line, d.Path)
		}
		if d := Dispatch(State{Proto: 2, ClusterAnswers: true, Pinned: true, Multi: true}, cmd); d.Path != PathPinned {
			t.Errorf("%s in MULTI: %v", line, d.Path)
		}
	}
	if d := Dispatch(State{Proto: 2, ClusterAnswers: true}, classify("CLUSTER COUNTKEYSINSLOT 1")); d.Path != PathShared {
		t.Errorf("CLUSTER COUNTKEYSINSLOT: %v", d.Path)
	}
}
