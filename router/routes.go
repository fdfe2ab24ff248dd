package router

import "github.com/respite/respite/internal/config"

// Route is what the router knows of one configured route: enough to match
// a key to it and to tell its policy and format apart. The route's policy
// itself (package policy) sits at the same index in the route layer's set.
type Route struct {
	Name   string
	Prefix string
	Policy config.Policy
	Format config.Format
}

// Routes is a snapshot of the configured routes, immutable once built; a
// reload builds a new one. A key belongs to the route with the longest
// prefix it starts with. The zero *Routes (nil) has no routes.
type Routes struct {
	list   []Route
	byLen  []int // indexes into list, longest prefix first
	minLen int   // the shortest prefix's length
}

// NewRoutes indexes list; Match returns positions in it.
func NewRoutes(list []Route) *Routes {
	rs := &Routes{list: append([]Route(nil), list...)}
	for i := range rs.list {
		rs.byLen = append(rs.byLen, i)
	}
	for i := 1; i < len(rs.byLen); i++ { // insertion sort, longest first
		for j := i; j > 0 && len(rs.list[rs.byLen[j]].Prefix) > len(rs.list[rs.byLen[j-1]].Prefix); j-- {
			rs.byLen[j], rs.byLen[j-1] = rs.byLen[j-1], rs.byLen[j]
		}
	}
	if n := len(rs.byLen); n > 0 {
		rs.minLen = len(rs.list[rs.byLen[n-1]].Prefix)
	}
	return rs
}

// Len is the number of routes.
func (rs *Routes) Len() int {
	if rs == nil {
		return 0
	}
	return len(rs.list)
}

// Route returns route i.
func (rs *Routes) Route(i int) *Route { return &rs.list[i] }

// Match returns the index of the route of key, or -1.
func (rs *Routes) Match(key []byte) int {
	if rs == nil || len(key) < rs.minLen {
		return -1
	}
	for _, i := range rs.byLen {
		p := rs.list[i].Prefix
		if len(key) >= len(p) && string(key[:len(p)]) == p {
			return i
		}
	}
	return -1
}

// MatchString is Match for a string key.
func (rs *Routes) MatchString(key string) int {
	if rs == nil || len(key) < rs.minLen {
		return -1
	}
	for _, i := range rs.byLen {
		p := rs.list[i].Prefix
		if len(key) >= len(p) && key[:len(p)] == p {
			return i
		}
	}
	return -1
}
