package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// redisConn is the small RESP2 client the cluster and sentinel helpers
// use to set up and watch their servers (this package cannot import the
// proxy's own packages, whose tests import it).
type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

// replyError is an error reply from the server, such as
// "MOVED 3999 127.0.0.1:7001"; failures to reach the server are other
// errors.
type replyError string

func (e replyError) Error() string { return string(e) }

// redisCallTimeout bounds one command, from dialling to the last reply
// byte; generous, for a loaded machine.
const redisCallTimeout = 10 * time.Second

func dialRedis(addr string) (*redisConn, error) {
	c, err := net.DialTimeout("tcp", addr, redisCallTimeout)
	if err != nil {
		return nil, err
	}
	return &redisConn{c: c, r: bufio.NewReader(c)}, nil
}

func (rc *redisConn) Close() error { return rc.c.Close() }

// do sends one command and reads its reply: a string (simple or bulk),
// an int64, nil (null bulk or array), or a []any of those. An error reply
// comes back as a replyError.
func (rc *redisConn) do(args ...string) (any, error) {
	rc.c.SetDeadline(time.Now().Add(redisCallTimeout))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(rc.c, b.String()); err != nil {
		return nil, err
	}
	return rc.read()
}

func (rc *redisConn) read() (any, error) {
	line, err := rc.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("testenv: empty RESP line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, replyError(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$', '*':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("testenv: bad length in %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		if line[0] == '$' {
			buf := make([]byte, n+2)
			if _, err := io.ReadFull(rc.r, buf); err != nil {
				return nil, err
			}
			return string(buf[:n]), nil
		}
		items := make([]any, n)
		for i := range items {
			// An error inside an array is kept as an element.
			v, err := rc.read()
			var re replyError
			if errors.As(err, &re) {
				v, err = re, nil
			}
			if err != nil {
				return nil, err
			}
			items[i] = v
		}
		return items, nil
	}
	return nil, fmt.Errorf("testenv: unexpected RESP line %q", line)
}

// redisCall sends one command on a connection of its own.
func redisCall(addr string, args ...string) (any, error) {
	rc, err := dialRedis(addr)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return rc.do(args...)
}

// redisText is redisCall for commands that answer with a string, such as
// CLUSTER NODES or INFO. The error names the command and the server.
func redisText(addr string, args ...string) (string, error) {
	rc, err := dialRedis(addr)
	if err != nil {
		return "", fmt.Errorf("testenv: %s on %s: %w", strings.Join(args, " "), addr, err)
	}
	defer rc.Close()
	return rc.text(args...)
}

// text is do for commands that answer with a string; the error names the
// command and the server.
func (rc *redisConn) text(args ...string) (string, error) {
	addr := rc.c.RemoteAddr().String()
	v, err := rc.do(args...)
	if err != nil {
		return "", fmt.Errorf("testenv: %s on %s: %w", strings.Join(args, " "), addr, err)
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("testenv: %s on %s: want a string, got %T %v", strings.Join(args, " "), addr, v, v)
	}
	return s, nil
}

// infoField returns the value of field in an INFO or CLUSTER INFO reply
// ("field:value" lines), "" when absent.
func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(line, "\r"), field+":"); ok {
			return v
		}
	}
	return ""
}

// linkUp checks that the server at addr is a replica whose link to its
// primary is up.
func linkUp(addr string) error {
	info, err := redisText(addr, "INFO", "replication")
	if err != nil {
		return err
	}
	if role := infoField(info, "role"); role != "slave" {
		return fmt.Errorf("%s has role:%s, want slave", addr, role)
	}
	if st := infoField(info, "master_link_status"); st != "up" {
		return fmt.Errorf("%s has master_link_status:%s", addr, st)
	}
	return nil
}
