//go:build !race

package server

// raceSlow: the arrival order's waits as they are (see race_test.go).
const raceSlow = 0
