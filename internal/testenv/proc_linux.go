//go:build linux

package testenv

import (
	"os/exec"
	"runtime"
	"syscall"
)

// setProcAttr puts the child in a process group of its own (so a kill takes
// the whole group) and has the kernel SIGKILL it when this process dies.
// It keeps any Credential already set.
func setProcAttr(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

func spawnLoop(ch chan spawnReq) {
	runtime.LockOSThread() // never unlocked: this thread lives forever
	for r := range ch {
		r.res <- r.cmd.Start()
	}
}
