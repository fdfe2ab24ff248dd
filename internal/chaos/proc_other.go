//go:build !linux

package chaos

import "os/exec"

// setProcAttr does nothing outside Linux: the harness kills the proxy
// itself when it is done.
func setProcAttr(cmd *exec.Cmd) {}
