//go:build !linux

package main

// keepSysmonAwake does nothing off Linux (see sysmon_linux.go).
func keepSysmonAwake() bool { return true }
