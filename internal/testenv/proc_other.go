//go:build unix && !linux

package testenv

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the child in a process group of its own, so a kill takes
// the whole group. Outside Linux there is no parent-death signal: a test
// binary that crashes may leave its servers running.
func setProcAttr(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
}

func spawnLoop(ch chan spawnReq) {
	for r := range ch {
		r.res <- r.cmd.Start()
	}
}
