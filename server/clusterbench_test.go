package server

import (
	"strconv"
	"sync"
	"testing"
)

// BenchmarkClusterPipelinedGET: 8 clients, 16 GETs of random keys a
// write, through a cluster proxy (and, with -bench=Standalone, one in
// front of the standalone Redis) - for profiling the cluster path.
func BenchmarkClusterPipelinedGET(b *testing.B) {
	benchPipelined(b, startClusterProxy(b, testCluster(b)))
}

func BenchmarkStandalonePipelinedGET(b *testing.B) {
	benchPipelined(b, startProxy(b, nil))
}

func benchPipelined(b *testing.B, addr string) {
	var req []byte
	for i := range 16 {
		req = append(req, encode("GET", "key:"+strconv.Itoa(i*7919))...)
	}
	const clients = 8
	conns := make([]*rawConn, clients)
	for i := range conns {
		conns[i] = dialRaw(b, addr)
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/clients + 1
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				c.send(req)
				for range 16 {
					c.read()
				}
			}
		}()
	}
	wg.Wait()
}
