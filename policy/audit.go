package policy

import (
	"context"
	"log/slog"
	"time"

	"github.com/respite/respite/resp"
)

// The audit log of routed writes (a route's audit: true, off by default):
// one structured line per write command on one of the route's keys, at
// level info, message "audit", with the route, the key (as the client
// names it), the command, the outcome (ok, error, or aborted for a write
// queued in a MULTI whose EXEC did not run), the duration and, for errors,
// the error. Writes inside MULTI are logged once EXEC decided them, with
// multi=true. Values are never logged.

// Outcomes of an audited write.
const (
	auditOK      = "ok"
	auditError   = "error"
	auditAborted = "aborted"
)

// audit logs one write of key by command, if the route audits.
func (r *Route) audit(command, key, outcome, errText string, d time.Duration, multi bool) {
	if !r.cfg.Audit {
		return
	}
	attrs := []slog.Attr{
		slog.String("key", r.cfg.Prefix+r.id(key)),
		slog.String("command", command),
		slog.String("outcome", outcome),
		slog.Duration("duration", d),
	}
	if errText != "" {
		attrs = append(attrs, slog.String("error", errText))
	}
	if multi {
		attrs = append(attrs, slog.Bool("multi", true))
	}
	r.log.LogAttrs(context.Background(), slog.LevelInfo, "audit", attrs...)
}

// auditReply logs a write whose reply is rep.
func (r *Route) auditReply(o Op, rep resp.Reply, start time.Time, multi bool) {
	if !r.cfg.Audit {
		return
	}
	outcome, errText := auditOK, ""
	if rep.IsError() {
		outcome, errText = auditError, rep.ErrorText()
	}
	r.audit(o.ID.Name(), o.key(), outcome, errText, time.Since(start), multi)
}

// auditTxn logs the writes of t once EXEC decided them: outcome for all
// (error or aborted, with errText), or, with elems (EXEC's elements after
// Finish), each write's own reply.
func (t *Txn) auditTxn(outcome, errText string, elems [][]byte) {
	if t.audited {
		return
	}
	t.audited = true
	d := time.Since(t.start)
	for _, op := range t.ops {
		if op.read || !op.r.cfg.Audit {
			continue
		}
		out, e := outcome, errText
		if elems != nil && op.Pos < len(elems) {
			out, e = auditOK, ""
			if el := elems[op.Pos]; len(el) > 0 && el[0] == '-' {
				out, e = auditError, oneLine(string(el[1:]))
			}
		}
		op.r.audit(op.op.ID.Name(), op.Key(), out, e, d, true)
	}
}
