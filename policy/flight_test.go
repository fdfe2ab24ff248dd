package policy

import "testing"

func TestFlights(t *testing.T) {
	var f flights
	a, lead := f.join("k")
	if !lead {
		t.Fatal("first join does not lead")
	}
	b, lead := f.join("k")
	if lead || b != a {
		t.Fatal("second join leads, or got another flight")
	}
	if _, lead := f.join("other"); !lead {
		t.Fatal("another key's first join does not lead")
	}
	f.forget("k")
	c, lead := f.join("k")
	if !lead || c == a {
		t.Fatal("a join after forget joins the forgotten flight")
	}
	f.land("k", a, row{found: true, value: "v"}, nil)
	<-b.done
	if !b.rw.found || b.rw.value != "v" {
		t.Fatalf("waiter got %+v", b.rw)
	}
	// Landing the forgotten flight leaves the new one in place.
	if d, lead := f.join("k"); lead || d != c {
		t.Fatal("landing a forgotten flight ended the new one")
	}
	f.land("k", c, row{}, nil)
	if _, lead := f.join("k"); !lead {
		t.Fatal("a join after land does not lead")
	}
}
