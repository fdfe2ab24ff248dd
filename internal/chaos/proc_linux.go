//go:build linux

package chaos

import (
	"os/exec"
	"syscall"
)

// setProcAttr has the kernel SIGKILL the proxy when the test process dies,
// so a crashed or timed-out test leaves no proxy behind.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
